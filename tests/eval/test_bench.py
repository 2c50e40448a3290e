from eval import bench


def test_bench_prints_a_row_per_case_and_length_for_ops_and_blocks(capsys):
    bench.main(["--ops", "short_conv", "--blocks", "base_conv,attention", "--T", "16", "32", "--repeats", "1", "--no-memory"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = {(r.split("|")[1].strip(), r.split("|")[3].strip()) for r in rows}
    for op in ("sdpa", "short_conv", "block:base_conv", "block:attention"):
        assert {(op, "16"), (op, "32")} <= names, (op, names)
    assert all(float(r.split("|")[4]) > 0 for r in rows)


def test_every_sequence_mixer_in_conf_block_has_a_bench_case():
    names = {c.op for c in bench.block_cases()}
    assert {"block:attention", "block:gla", "block:mamba", "block:rwkv6"} <= names
    assert "block:swiglu" not in names


def test_write_docs_puts_the_command_and_the_table_in_the_performance_page(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "docs" / "performance.md"
    monkeypatch.setattr(bench, "PERFORMANCE_DOC", doc)
    bench.main(["--ops", "short_conv", "--T", "16", "--repeats", "1", "--no-memory", "--write-docs"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    text = doc.read_text()
    assert "    python -m eval.bench --ops short_conv --T 16 --repeats 1 --no-memory --write-docs\n" in text
    assert "depend on the machine" in text
    assert text.splitlines()[-len(printed):] == printed  # the table exactly as printed
