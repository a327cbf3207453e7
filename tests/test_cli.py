"""The small `splitray` commands: split-points, profiles, schema."""

from __future__ import annotations

import json

from splitray.cli import main


def test_split_points_json_lists_every_split_with_the_papers_split(capsys):
    assert main(["split-points", "vgg11", "--input-shape", "3,32,32", "--format", "json"]) == 0
    points = json.loads(capsys.readouterr().out)
    assert [p["index"] for p in points] == list(range(len(points)))
    five = points[5]
    assert five["shape"] == [128, 8, 8] and five["bytes_per_sample_fp32"] == 4 * 128 * 8 * 8
    assert five["client_flops"] > 0 and five["server_flops"] > 0
    assert points[0]["client_flops"] == 0


def test_split_points_table_and_bad_input(capsys):
    assert main(["split-points", "tiny_cnn", "--num-classes", "5"]) == 0
    assert "pool1" in capsys.readouterr().out
    assert main(["split-points", "vgg99"]) == 2
    assert "MODEL: 'vgg99' is not allowed" in capsys.readouterr().err
    assert main(["split-points", "vgg11", "--input-shape", "3,32"]) == 2
    assert "--input-shape: '3,32' is not allowed" in capsys.readouterr().err


def test_profiles_and_schema_document_what_configs_and_tables_hold(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "raspberry_pi_4" in out and "wifi6_shared" in out and "ATT-LTE-driving.up" in out
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert "`bytes_up`" in out and "`test_accuracy`" in out and "### evals.parquet" in out
