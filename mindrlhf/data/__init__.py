"""Data: tokenizers, templates, JSONL -> MindRecord converters and mindspore.dataset pipelines."""
