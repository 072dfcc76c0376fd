"""HCCL rank tables for Ascend multi-device runs (the predecessor's ``hccl_tools.py``), plus merge and validate.

    python -m mindrlhf.tools.rank_table --device_num "[0,8)"              # hccl_8p_01234567_<host ip>.json
    python -m mindrlhf.tools.rank_table --device_num "[0,2)" --server_ip 10.0.0.1 --device_ips 192.98.92.1,192.98.92.2
    python -m mindrlhf.tools.rank_table --merge hccl_8p_a.json hccl_8p_b.json --output hccl_16p.json
    python -m mindrlhf.tools.rank_table --validate hccl_16p.json --expect 16

``--device_num "[first,last)"`` selects positions ``first .. last-1`` of ``--visible_devices``; ``"[first,last]"``
means the same range (end exclusive whatever the closing bracket, as in the 2024+ predecessor), so ``"[0,8]"`` is
8 devices. The device ids written are ``visible_devices[k]``, and the file name concatenates those ids (the
predecessor concatenated the positions ``k``; the two agree for the default ``--visible_devices``).

Device IPs, per device id: ``--device_ips`` when given (one per device, in order); else ``hccn_tool -i <id> -ip -g``
when ``hccn_tool`` is on PATH; else the ``address_<id>=<ip>`` lines of ``--hccn_conf`` (default ``/etc/hccn.conf``).
Unlike the predecessor, the lookup and the table use the same (visible) device id.

The table format (all values strings, this key order) is the one HCCL reads::

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "<ip>",
                      "device": [{"device_id": "0", "device_ip": "<ip>", "rank_id": "0"}, ...],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Files are written with indent 4 under a temporary name, given mode 0o750 and moved into place.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Union

from mindrlhf.atomic import write_json
from mindrlhf.errors import UserError

HCCN_CONF = "/etc/hccn.conf"
FILE_MODE = 0o750
_RANGE = re.compile(r"^\[(\d+),(\d+)[\]\)]$")
_CONF_LINE = re.compile(r"^address_(\d+)\s*=\s*(\S+)$")


class RankTableError(UserError):
    """A bad device range, a missing device IP or a malformed rank table; the message says what to fix."""


def parse_device_range(text: str, device_num_per_node: int = 8) -> List[int]:
    """Positions selected by ``"[first,last)"`` or ``"[first,last]"`` (both: ``first .. last-1``).

    Checks, as the predecessor: ``0 <= first``, ``last <= device_num_per_node``, ``first < last``, and a range that
    crosses device 4 (``first < 4 < last``) must be the whole node: ``first == 0`` and ``last in (8, 16)``.
    """
    match = _RANGE.match(text.replace(" ", ""))  # digits only, so first >= 0 holds once it matches
    if match is None:
        raise RankTableError(f"--device_num {text!r} must look like '[first,last)' (e.g. '[0,8)')")
    first, last = int(match.group(1)), int(match.group(2))
    if last > device_num_per_node:
        raise RankTableError(
            f"--device_num {text!r}: last ({last}) must be <= device_num_per_node ({device_num_per_node})"
        )
    if first >= last:
        raise RankTableError(f"--device_num {text!r}: first ({first}) must be < last ({last})")
    if first < 4 < last and not (first == 0 and last in (8, 16)):
        raise RankTableError(
            f"--device_num {text!r}: a range crossing device 4 must cover the whole node "
            "('[0,8)' or '[0,16)'); use devices 0-3 or 4-7 otherwise"
        )
    return list(range(first, last))


def _ip_from_hccn_tool(tool: str, device_id: str) -> Optional[str]:
    """The ``ipaddr`` of ``device_id`` from ``hccn_tool -i <id> -ip -g`` (value after ':' on line 1), or None."""
    try:
        out = subprocess.run(
            [tool, "-i", device_id, "-ip", "-g"], check=False, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines or ":" not in lines[0]:
        return None
    return lines[0].split(":", 1)[1].strip() or None


def _ips_from_conf(path: str) -> Dict[str, str]:
    """``{device_id: ip}`` from the ``address_<id>=<ip>`` lines of an hccn.conf; empty if the file is missing."""
    try:
        with open(path, encoding="utf-8") as fin:
            lines = fin.read().splitlines()
    except OSError:
        return {}
    found = (_CONF_LINE.match(line.strip()) for line in lines)
    return {m.group(1): m.group(2) for m in found if m}


def device_ips(
    devices: Sequence[str], hccn_conf: str = HCCN_CONF, ips: Optional[Sequence[str]] = None, tool: str = "hccn_tool"
) -> Dict[str, str]:
    """``{device_id: device_ip}`` for every id in ``devices``.

    Args:
        devices: device ids (strings, e.g. ``["0", "1"]``).
        hccn_conf: fallback file with ``address_<id>=<ip>`` lines.
        ips: explicit IPs, one per device in order; when given nothing else is consulted.
        tool: the ``hccn_tool`` executable, used when found on PATH (or given as a path).
    """
    devices = [str(d) for d in devices]
    if ips is not None:
        if len(ips) != len(devices):
            raise RankTableError(f"--device_ips has {len(ips)} entries for {len(devices)} devices {devices}")
        return dict(zip(devices, ips))
    found: Dict[str, str] = {}
    if shutil.which(tool):
        for device in devices:
            ip = _ip_from_hccn_tool(tool, device)
            if ip:
                found[device] = ip
    missing = [d for d in devices if d not in found]
    if missing:
        conf = _ips_from_conf(hccn_conf)
        found.update({d: conf[d] for d in missing if d in conf})
    missing = [d for d in devices if d not in found]
    if missing:
        raise RankTableError(
            f"no IP for device(s) {','.join(missing)}: neither hccn_tool nor {hccn_conf} "
            "lists them; pass --device_ips ip0,ip1,... (one per device)"
        )
    return {d: found[d] for d in devices}


def select_devices(devices: Sequence[int], visible_devices: Sequence[str]) -> List[str]:
    """The device ids ``visible_devices[k]`` for the positions ``k`` in ``devices``."""
    if not devices or max(devices) >= len(visible_devices):
        raise RankTableError(
            f"--visible_devices {','.join(map(str, visible_devices))} has {len(visible_devices)} "
            f"entries; --device_num needs positions {list(devices)}"
        )
    return [str(visible_devices[k]) for k in devices]


def build_rank_table(
    devices: Sequence[int], visible_devices: Sequence[str], server_ip: str, ips: Dict[str, str]
) -> dict:
    """A one-server table: rank ``r`` is ``visible_devices[devices[r]]`` with its IP from ``ips``.

    Args:
        devices: positions into ``visible_devices`` (from ``parse_device_range``).
        visible_devices: device ids as strings (``--visible_devices`` split on ',').
        server_ip: this host's IP, written as ``server_id``.
        ips: ``{device_id: device_ip}`` (from ``device_ips``).
    """
    device_list = []
    for rank, device_id in enumerate(select_devices(devices, visible_devices)):
        device_list.append({"device_id": device_id, "device_ip": ips[device_id], "rank_id": str(rank)})
    server = {"server_id": server_ip, "device": device_list, "host_nic_ip": "reserve"}
    return {"version": "1.0", "server_count": "1", "server_list": [server], "status": "completed"}


def rank_table_name(devices: Sequence[int], server_ip: str) -> str:
    """``hccl_<n>p_<concatenated device ids>_<server_ip>.json``, e.g. ``hccl_8p_01234567_127.0.0.1.json``."""
    return f"hccl_{len(devices)}p_{''.join(map(str, devices))}_{server_ip}.json"


def _write_json(table: dict, path: str) -> str:
    """Write ``table`` to ``path`` atomically (:func:`mindrlhf.atomic.write_json`), mode 0o750."""
    return write_json(path, table, indent=4, mode=FILE_MODE, trailing_newline=True)


def write_rank_table(table: dict, folder: str = ".") -> str:
    """Write a one-server table as ``folder/hccl_<n>p_<device ids>_<server_ip>.json``; returns that path."""
    server = table["server_list"][0]
    devices = [d["device_id"] for d in server["device"]]
    return _write_json(table, os.path.join(folder, rank_table_name(devices, server["server_id"])))


def _load(path_or_dict: Union[str, dict]) -> tuple:
    """``(table, name)`` where name is the file path or ``"<dict>"``, for error messages."""
    if isinstance(path_or_dict, dict):
        return path_or_dict, "<dict>"
    try:
        with open(path_or_dict, encoding="utf-8") as fin:
            return json.load(fin), path_or_dict
    except json.JSONDecodeError as err:
        raise RankTableError(f"{path_or_dict}: not valid JSON ({err})") from err
    except OSError as err:
        raise RankTableError(f"{path_or_dict}: cannot read ({err.strerror})") from err


def merge_rank_tables(paths: Sequence[Union[str, dict]]) -> dict:
    """One table for several servers, in the given order, with rank ids renumbered ``0..n-1`` across them."""
    if not paths:
        raise RankTableError("--merge needs at least one rank table")
    servers, seen = [], {}
    for item in paths:
        table, name = _load(item)
        _validate(table, name)
        for server in table["server_list"]:
            server_id = server["server_id"]
            if server_id in seen:
                raise RankTableError(f"{name}: server_id {server_id} is already in {seen[server_id]}")
            seen[server_id] = name
            servers.append(copy.deepcopy(server))
    rank = 0
    for server in servers:
        for device in server["device"]:
            device["rank_id"] = str(rank)
            rank += 1
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": servers, "status": "completed"}


def _check_keys(obj, keys: Sequence[str], where: str, name: str) -> None:
    if not isinstance(obj, dict):
        raise RankTableError(f"{name}: {where} must be a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise RankTableError(f"{name}: {where} is missing key(s) {', '.join(missing)}")


def validate_rank_table(path_or_dict: Union[str, dict], expected_devices: Optional[int] = None) -> int:
    """Check a rank table (a file path or a loaded dict) and return its number of ranks.

    Raises ``RankTableError`` naming the file for malformed JSON, missing keys, ``server_count`` not matching
    ``server_list``, duplicate or non-consecutive rank ids (must be ``0..n-1``), a device id listed twice on one
    server, or a rank count different from ``expected_devices``.
    """
    return _validate(*_load(path_or_dict), expected_devices)


def _validate(table, name: str, expected_devices: Optional[int] = None) -> int:
    """``validate_rank_table`` on a loaded table; ``name`` is the file named in error messages."""
    _check_keys(table, ("version", "server_count", "server_list", "status"), "the table", name)
    servers = table["server_list"]
    if not isinstance(servers, list) or str(table["server_count"]) != str(len(servers)):
        count = len(servers) if isinstance(servers, list) else "not a list"
        raise RankTableError(f"{name}: server_count {table['server_count']!r} does not match server_list ({count})")
    ranks, pairs = [], set()
    for i, server in enumerate(servers):
        _check_keys(server, ("server_id", "device"), f"server_list[{i}]", name)
        for j, device in enumerate(server["device"]):
            _check_keys(device, ("device_id", "device_ip", "rank_id"), f"server_list[{i}].device[{j}]", name)
            pair = (server["server_id"], str(device["device_id"]))
            if pair in pairs:
                raise RankTableError(f"{name}: device_id {pair[1]} appears twice on server {pair[0]}")
            pairs.add(pair)
            try:
                ranks.append(int(device["rank_id"]))
            except (TypeError, ValueError):
                raise RankTableError(f"{name}: rank_id {device['rank_id']!r} is not an integer") from None
    duplicates = sorted({r for r in ranks if ranks.count(r) > 1})
    if duplicates:
        raise RankTableError(f"{name}: duplicate rank_id(s) {duplicates}")
    if sorted(ranks) != list(range(len(ranks))):
        raise RankTableError(f"{name}: rank_ids must be 0..{len(ranks) - 1}, got {sorted(ranks)}")
    if expected_devices is not None and len(ranks) != expected_devices:
        raise RankTableError(f"{name}: {len(ranks)} devices, expected {expected_devices}")
    return len(ranks)


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags: the predecessor's four, then IP sources, output folder, and the merge/validate modes."""
    parser = argparse.ArgumentParser(description="Write, merge or validate an HCCL rank table.")
    parser.add_argument("--device_num", default="[0,8)", help="positions '[first,last)' ('[first,last]' is the same)")
    parser.add_argument("--visible_devices", default="0,1,2,3,4,5,6,7", help="device ids, comma separated")
    parser.add_argument("--server_ip", default="", help="this host's IP (default: gethostbyname(gethostname()))")
    parser.add_argument("--device_num_per_node", type=int, default=8, help="devices on one server")
    parser.add_argument("--device_ips", default=None, help="device IPs, comma separated, one per device")
    parser.add_argument("--hccn_conf", default=HCCN_CONF, help="fallback file with address_<id>=<ip> lines")
    parser.add_argument("--output_dir", default=".", help="folder for the written table")
    parser.add_argument("--merge", nargs="+", metavar="TABLE", help="merge these one-server tables (needs --output)")
    parser.add_argument("--output", default=None, help="output file of --merge")
    parser.add_argument("--validate", metavar="TABLE", help="only check this table and print its rank count")
    parser.add_argument("--expect", type=int, default=None, help="with --validate: required number of devices")
    return parser


def _run(args: argparse.Namespace) -> str:
    """Do what ``args`` asks; returns the line to print."""
    if args.validate:
        count = validate_rank_table(args.validate, args.expect)
        return f"{args.validate}: valid, {count} devices"
    if args.merge:
        if not args.output:
            raise RankTableError("--merge needs --output FILE")
        return _write_json(merge_rank_tables(args.merge), args.output)
    positions = parse_device_range(args.device_num, args.device_num_per_node)
    visible = [d.strip() for d in args.visible_devices.split(",") if d.strip()]
    explicit = [ip.strip() for ip in args.device_ips.split(",")] if args.device_ips else None
    ips = device_ips(select_devices(positions, visible), args.hccn_conf, explicit)
    server_ip = args.server_ip or socket.gethostbyname(socket.gethostname())
    return write_rank_table(build_rank_table(positions, visible, server_ip, ips), args.output_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; prints the written path (or the validation result) and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        print(_run(args))
    except RankTableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
