"""``mindrlhf.tools.rank_table``: device ranges, IP lookup, the exact HCCL JSON, merge, validation and the script."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from mindrlhf.tools.rank_table import (
    RankTableError,
    build_rank_table,
    device_ips,
    main,
    merge_rank_tables,
    parse_device_range,
    validate_rank_table,
    write_rank_table,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "hccl_tools.py")
VISIBLE = [str(i) for i in range(8)]


def ip_of(device: int, net: int = 92) -> str:
    return f"192.98.{net}.{device + 1}"


def write_conf(folder: str, devices=range(8)) -> str:
    path = os.path.join(folder, "hccn.conf")
    lines = [f"address_{d}={ip_of(d)}\nnetmask_{d}=255.255.255.0\n" for d in devices]
    with open(path, "w") as fout:
        fout.write("# comment\n" + "".join(lines))
    return path


def one_server(server_ip: str, n: int = 8, net: int = 92) -> dict:
    ips = {str(d): ip_of(d, net) for d in range(n)}
    return build_rank_table(list(range(n)), VISIBLE, server_ip, ips)


def load(path) -> dict:
    with open(path) as fin:
        return json.load(fin)


def write_json(folder: str, name: str, table) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as fout:
        fout.write(table if isinstance(table, str) else json.dumps(table))
    return path


# ---------------------------------------------------------------- device ranges


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0,8)", list(range(8))),
        ("[0,8]", list(range(8))),
        ("[0,4)", [0, 1, 2, 3]),
        ("[4,8)", [4, 5, 6, 7]),
        ("[2,3]", [2]),
        ("[ 0, 2)", [0, 1]),
    ],
)
def test_parse_device_range(text, expected):
    assert parse_device_range(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("0,8", "must look like '[first,last)'"),
        ("[-1,4)", "must look like '[first,last)'"),
        ("[0,9)", "last (9) must be <= device_num_per_node (8)"),
        ("[3,3)", "first (3) must be < last (3)"),
        ("[5,2)", "first (5) must be < last (2)"),
        ("[2,6)", "a range crossing device 4 must cover the whole node"),
        ("[1,8)", "a range crossing device 4 must cover the whole node"),
    ],
)
def test_parse_device_range_errors(text, message):
    with pytest.raises(RankTableError) as err:
        parse_device_range(text)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_parse_device_range_16_per_node():
    assert parse_device_range("[0,16)", device_num_per_node=16) == list(range(16))
    with pytest.raises(RankTableError, match="crossing device 4"):
        parse_device_range("[0,12)", device_num_per_node=16)


# ---------------------------------------------------------------- device IPs


def test_device_ips_from_hccn_conf(tmp_path):
    conf = write_conf(str(tmp_path))
    assert device_ips(["0", "3"], hccn_conf=conf, tool="no-such-hccn-tool") == {"0": ip_of(0), "3": ip_of(3)}


def test_device_ips_explicit_list_wins(tmp_path):
    conf = write_conf(str(tmp_path))
    assert device_ips(["0", "1"], hccn_conf=conf, ips=["10.0.0.1", "10.0.0.2"]) == {"0": "10.0.0.1", "1": "10.0.0.2"}
    with pytest.raises(RankTableError, match="--device_ips has 1 entries for 2 devices"):
        device_ips(["0", "1"], ips=["10.0.0.1"])


def test_device_ips_from_hccn_tool(tmp_path):
    tool = tmp_path / "hccn_tool"
    tool.write_text('#!/bin/sh\necho "ipaddr:10.1.1.$2"\necho "netmask:255.255.255.0"\n')
    tool.chmod(0o755)
    conf = write_conf(str(tmp_path))
    assert device_ips(["2", "5"], hccn_conf=conf, tool=str(tool)) == {"2": "10.1.1.2", "5": "10.1.1.5"}


def test_device_ips_missing(tmp_path):
    conf = write_conf(str(tmp_path), devices=[0])
    with pytest.raises(RankTableError) as err:
        device_ips(["0", "1", "2"], hccn_conf=conf, tool="no-such-hccn-tool")
    assert "no IP for device(s) 1,2" in str(err.value) and "pass --device_ips" in str(err.value)
    with pytest.raises(RankTableError, match="pass --device_ips"):
        device_ips(["0"], hccn_conf=str(tmp_path / "absent.conf"), tool="no-such-hccn-tool")


# ---------------------------------------------------------------- table format and file


def test_eight_device_table_exact(tmp_path):
    table = one_server("127.0.0.1")
    expected = {
        "version": "1.0",
        "server_count": "1",
        "server_list": [
            {
                "server_id": "127.0.0.1",
                "device": [
                    {"device_id": str(d), "device_ip": f"192.98.92.{d + 1}", "rank_id": str(d)} for d in range(8)
                ],
                "host_nic_ip": "reserve",
            }
        ],
        "status": "completed",
    }
    assert table == expected
    assert list(table) == ["version", "server_count", "server_list", "status"]
    assert list(table["server_list"][0]) == ["server_id", "device", "host_nic_ip"]
    assert list(table["server_list"][0]["device"][0]) == ["device_id", "device_ip", "rank_id"]
    path = write_rank_table(table, str(tmp_path))
    assert os.path.basename(path) == "hccl_8p_01234567_127.0.0.1.json"
    with open(path) as fin:
        text = fin.read()
    assert json.loads(text) == expected
    assert text == json.dumps(expected, indent=4) + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp file left behind


def test_two_device_table_exact(tmp_path):
    table = build_rank_table([4, 5], VISIBLE, "10.0.0.7", {"4": "192.98.92.5", "5": "192.98.92.6"})
    assert table == {
        "version": "1.0",
        "server_count": "1",
        "server_list": [
            {
                "server_id": "10.0.0.7",
                "device": [
                    {"device_id": "4", "device_ip": "192.98.92.5", "rank_id": "0"},
                    {"device_id": "5", "device_ip": "192.98.92.6", "rank_id": "1"},
                ],
                "host_nic_ip": "reserve",
            }
        ],
        "status": "completed",
    }
    path = write_rank_table(table, str(tmp_path))
    assert os.path.basename(path) == "hccl_2p_45_10.0.0.7.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750


def test_visible_devices_remap_and_too_few():
    table = build_rank_table([0, 1], ["6", "7"], "1.2.3.4", {"6": "a", "7": "b"})
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["6", "7"]
    with pytest.raises(RankTableError, match="--visible_devices 0,1 has 2 entries"):
        build_rank_table([0, 1, 2, 3], ["0", "1"], "1.2.3.4", {})


# ---------------------------------------------------------------- merge


def test_merge_two_servers(tmp_path):
    a = write_json(str(tmp_path), "a.json", one_server("10.0.0.1"))
    b = write_json(str(tmp_path), "b.json", one_server("10.0.0.2", net=93))
    merged = merge_rank_tables([a, b])
    assert merged["server_count"] == "2"
    assert [s["server_id"] for s in merged["server_list"]] == ["10.0.0.1", "10.0.0.2"]
    ranks = [d["rank_id"] for s in merged["server_list"] for d in s["device"]]
    assert ranks == [str(r) for r in range(16)]
    assert merged["server_list"][1]["device"][0] == {"device_id": "0", "device_ip": "192.98.93.1", "rank_id": "8"}
    assert list(merged) == ["version", "server_count", "server_list", "status"]
    assert validate_rank_table(merged, expected_devices=16) == 16

    out = str(tmp_path / "merged.json")
    assert main(["--merge", a, b, "--output", out]) == 0
    assert load(out) == merged
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o750


def test_merge_duplicate_server(tmp_path):
    a = write_json(str(tmp_path), "a.json", one_server("10.0.0.1"))
    b = write_json(str(tmp_path), "b.json", one_server("10.0.0.1"))
    with pytest.raises(RankTableError) as err:
        merge_rank_tables([a, b])
    assert f"{b}: server_id 10.0.0.1 is already in {a}" in str(err.value)


def test_merge_needs_output(tmp_path, capsys):
    a = write_json(str(tmp_path), "a.json", one_server("10.0.0.1"))
    assert main(["--merge", a]) == 1
    assert "--merge needs --output FILE" in capsys.readouterr().err


# ---------------------------------------------------------------- validation


def broken(edit) -> dict:
    table = merge_rank_tables([one_server("10.0.0.1", n=2), one_server("10.0.0.2", n=2)])
    edit(table)
    return table


def _drop_status(t):
    del t["status"]


def _drop_device_ip(t):
    del t["server_list"][1]["device"][0]["device_ip"]


def _set(key_path, value):
    def edit(t):
        obj = t
        for key in key_path[:-1]:
            obj = obj[key]
        obj[key_path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_status, "the table is missing key(s) status"),
        (_drop_device_ip, "server_list[1].device[0] is missing key(s) device_ip"),
        (_set(["server_count"], "3"), "server_count '3' does not match server_list (2)"),
        (_set(["server_list", 1, "device", 0, "rank_id"], "1"), "duplicate rank_id(s) [1]"),
        (_set(["server_list", 1, "device", 1, "rank_id"], "7"), "rank_ids must be 0..3, got [0, 1, 2, 7]"),
        (_set(["server_list", 0, "device", 1, "rank_id"], "x"), "rank_id 'x' is not an integer"),
        (_set(["server_list", 0, "device", 1, "device_id"], "0"), "device_id 0 appears twice on server 10.0.0.1"),
    ],
)
def test_validate_errors(tmp_path, edit, message):
    path = write_json(str(tmp_path), "bad.json", broken(edit))
    with pytest.raises(RankTableError) as err:
        validate_rank_table(path)
    assert str(err.value) == f"{path}: {message}"


def test_validate_malformed_and_count(tmp_path, capsys):
    bad = write_json(str(tmp_path), "bad.json", '{"version": "1.0",')
    with pytest.raises(RankTableError, match="^" + re.escape(f"{bad}: not valid JSON")):
        validate_rank_table(bad)
    good = write_json(str(tmp_path), "good.json", one_server("10.0.0.1"))
    with pytest.raises(RankTableError, match="^" + re.escape(f"{good}: 8 devices, expected 16") + "$"):
        validate_rank_table(good, expected_devices=16)
    assert validate_rank_table(good) == 8
    assert validate_rank_table(good, expected_devices=8) == 8
    assert main(["--validate", good, "--expect", "8"]) == 0
    assert f"{good}: valid, 8 devices" in capsys.readouterr().out
    assert main(["--validate", good, "--expect", "4"]) == 1
    assert "8 devices, expected 4" in capsys.readouterr().err


# ---------------------------------------------------------------- CLI and wrapper script


def test_main_explicit_ips(tmp_path, capsys):
    code = main(
        [
            "--device_num",
            "[0,2]",
            "--server_ip",
            "10.0.0.9",
            "--device_ips",
            "1.1.1.1,1.1.1.2",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / "hccl_2p_01_10.0.0.9.json")
    assert [d["device_ip"] for d in load(path)["server_list"][0]["device"]] == ["1.1.1.1", "1.1.1.2"]


def test_main_default_server_ip(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("socket.gethostname", lambda: "node-a")
    monkeypatch.setattr("socket.gethostbyname", lambda name: {"node-a": "10.9.8.7"}[name])
    assert main(["--device_num", "[0,1)", "--device_ips", "1.1.1.1", "--output_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "hccl_1p_0_10.9.8.7.json")


def test_main_bad_range(tmp_path, capsys):
    assert main(["--device_num", "[2,6)", "--output_dir", str(tmp_path)]) == 1
    assert "crossing device 4" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_wrapper_script(tmp_path):
    conf = write_conf(str(tmp_path))
    out_dir = tmp_path / "out"
    env = dict(os.environ, PATH=str(tmp_path))  # no hccn_tool reachable: the conf file is used
    proc = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--device_num",
            "[0,8)",
            "--server_ip",
            "127.0.0.1",
            "--hccn_conf",
            conf,
            "--output_dir",
            str(out_dir),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    path = out_dir / "hccl_8p_01234567_127.0.0.1.json"
    assert proc.stdout.strip() == str(path)
    assert load(path) == one_server("127.0.0.1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
