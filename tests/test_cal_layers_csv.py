"""hwmodels.layers_csv on headers and rows that used to be read wrong without a word: a misspelt
measured column, a column named twice, a quoted cell spanning lines or never closed, a row with extra fields."""
import pytest

from hwmodels import references as refs
from hwmodels.accelerator import Accelerator, HardwareConfigError
from hwmodels.layers_csv import read_layer_table, read_layers_csv
from ubnas.cli import main

HEADER = "name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,stride,padding,dilation,groups,batch"
FC = "fc,linear,1,1,64,10,1,1,1,0,1,1,1"


def _write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path, read=read_layer_table):
    with pytest.raises(HardwareConfigError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("measured, column, meant", [
    ("measured_cycles", "measured_utilisation", "measured_utilization"),
    ("measured_seconds", "measured_cycle", "measured_cycles"),
    ("measured_cycles", "Measured_Secs", "measured_seconds")])
def test_a_misspelt_measured_column_is_refused(tmp_path, measured, column, meant):
    """measured_utilisation was skipped as 'some measured_ column': the utilization was silently
    not compared.  The header is line 2 (after a comment)."""
    path = _write(tmp_path, f"# measured on the board\n{HEADER},{measured},{column}\n{FC},100,0.5\n")
    message = _error(path)
    assert message.startswith(f"{path}:2: unknown column '{column.lower()}'"), message
    assert f"did you mean '{meant}'" in message


def test_misspelt_measured_column_through_calibrate_cli(tmp_path, capsys):
    path = _write(tmp_path, f"{HEADER},measured_cycles,measured_utilisation\n" + f"{FC},100,0.5\n" * 8)
    out = tmp_path / "o.yaml"
    assert main(["calibrate", "--reference", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}:1: unknown column 'measured_utilisation'" in err
    assert not out.exists()


def test_a_spread_column_beside_the_measured_one_is_no_misspelling(tmp_path):
    """A profiler's export adds measured_cycles_std (or _p90) next to measured_cycles: it was
    refused as a near miss of a column the header already has."""
    path = _write(tmp_path, f"{HEADER},measured_cycles,measured_cycles_std,measured_cycles_p90\n{FC},100,3,104\n")
    assert [row.cycles for row in refs.measured_rows(path, Accelerator("a", 8, 8)).rows] == [100]


def test_other_extra_columns_are_still_ignored(tmp_path):
    # the SCALE-Sim suite CSV's own columns, and a note column, are no near misses
    path = _write(tmp_path, f"suite,{HEADER},array_rows,array_cols,dataflow,scalesim_compute_cycles,"
                            f"scalesim_total_cycles,measured_by,note\ncifar,{FC},8,8,ws,5,5,me,hi\n")
    assert [layer.name for layer in read_layers_csv(path)] == ["fc"]


@pytest.mark.parametrize("header, row", [
    # the second 'stride' (1) used to win silently over the first (2)
    (HEADER.replace("batch", "stride"), "c,conv,9,9,3,4,3,3,2,0,1,1,1"),
    (f"{HEADER},measured_cycles,MEASURED_CYCLES", f"{FC},100,200"),
])
def test_a_column_named_twice_is_refused(tmp_path, header, row):
    path = _write(tmp_path, f"{header}\n{row}\n")
    message = _error(path)
    repeated = header.split(",")[-1].lower()
    assert message.startswith(f"{path}:1: column '{repeated}' appears twice in the header"), message


def test_line_numbers_count_the_lines_of_a_quoted_multiline_cell(tmp_path):
    """Line 1 header, lines 2-3 one row whose quoted name spans two lines, line 4 a good row,
    line 5 a bad row: the error names line 5 (it used to name line 4)."""
    text = (f"{HEADER}\n"
            '"conv\nwith a note",conv,8,8,3,4,3,3,1,1,1,1,1\n'
            f"{FC}\n"
            "bad,conv,8,8,3,4,3,3,0,1,1,1,1\n")
    path = _write(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}:5: column 'stride' expected an integer >= 1, got '0'"), message
    table = read_layer_table(_write(tmp_path, "\n".join(text.splitlines()[:4]) + "\n", "ok.csv"))
    assert [row.where.rsplit(":", 1)[1] for row in table.rows] == ["2", "4"]
    assert table.rows[0].layer.name == "conv\nwith a note"


def test_line_numbers_of_measured_rows_after_a_multiline_cell(tmp_path):
    """The measured-CSV reader takes its FILE:LINE from the layer reader: header line 1, a row
    on lines 2-3, a row on line 4 whose measured_cycles is 'abc'."""
    text = (f"{HEADER},measured_cycles\n"
            f'"fc\nA",linear,1,1,64,10,1,1,1,0,1,1,1,100\n'
            f"{FC},abc\n")
    path = _write(tmp_path, text)
    with pytest.raises(HardwareConfigError, match=r"t\.csv:4: column 'measured_cycles' expected"):
        refs.measured_rows(path, Accelerator("a", 8, 8))


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    # 13 header columns; line 3 has a 14th field (a shifted or extra value)
    path = _write(tmp_path, f"{HEADER}\n{FC}\n{FC},7\n")
    assert _error(path).startswith(f"{path}:3: 14 fields but the header has 13")


@pytest.mark.parametrize("text", [f"# exported\n# {HEADER}\n{FC}\n",            # numpy.savetxt(header=...)
                                  f"# exported\n#,{HEADER}\n0,{FC}\n"])          # a spreadsheet's '#' index
def test_a_header_that_starts_with_a_hash_is_named_not_the_first_row(tmp_path, text):
    """The header was skipped as a comment and the error blamed line 3 for lacking 'name'."""
    path = _write(tmp_path, text)
    assert _error(path).startswith(f"{path}:2: this looks like the header, but a line starting with '#' is a "
                                   f"comment")


def test_a_header_with_a_typo_is_blamed_even_after_a_commented_column_list(tmp_path):
    """The '#' hint is for a header read as a comment: a real header row with a misspelt column
    is what the error names."""
    path = _write(tmp_path, f"# {HEADER}\n{HEADER.replace('in_channels', 'in_channel')}\n{FC}\n")
    assert _error(path).startswith(f"{path}:2: missing required column 'in_channels' in the header")
    path = _write(tmp_path, f"# {HEADER}\n{HEADER.replace('kind,', '')}\n{FC.replace('linear,', '')}\n")
    assert _error(path).startswith(f"{path}:2: missing required column 'kind' in the header")


def test_blank_and_comment_lines_keep_their_numbers(tmp_path):
    # line 1 comment, 2 blank, 3 header, 4 whitespace only, 5 comment, 6 good, 7 bad
    path = _write(tmp_path, f"# layers\n\n{HEADER}\n   \n  # skipped\n{FC}\nfc2,linear,1,1,0,10,1,1,1,0,1,1,1\n")
    assert _error(path).startswith(f"{path}:7: column 'in_channels' expected an integer >= 1")


@pytest.mark.parametrize("column, meant", [("batch_size", "batch"), ("pad", "padding"), ("BS", "batch"),
                                           ("dilation_rate", "dilation"), ("num_groups", "groups"),
                                           ("pad_h", "padding"), ("stride_w", "stride"), ("batchsize", "batch"),
                                           ("Batch Size", "batch"), ("N", "batch"), ("stride_size", "stride"),
                                           ("pad_size", "padding"), ("Pad Size", "padding")])
def test_another_tools_name_for_a_layer_column_is_refused(tmp_path, column, meant):
    """batch_size and pad are too far off batch and padding for the near-miss check: the batch
    (or padding) silently took its default, a network 8x too cheap."""
    path = _write(tmp_path, "name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w," + column +
                  "\nc1,conv,32,32,3,64,3,3,8\n")
    message = _error(path)
    assert message.startswith(f"{path}:1: unknown column '{column.lower()}' (did you mean '{meant}'?"), message


@pytest.mark.parametrize("rows, line", [
    (f"{FC}\n" + FC.replace(",1,1,1,0,1,1,1", ',1,1,1,0,1,1,"1') + "\n", 3),   # the last row: was read as batch 1
    (FC.replace("fc,", 'fc,"') + f"\n{FC}\n{FC}\n", 2),                        # the rest of the file in one cell
])
def test_an_unterminated_quote_is_located_not_read_to_the_end_of_the_file(tmp_path, rows, line):
    path = _write(tmp_path, f"{HEADER}\n{rows}")
    message = _error(path)
    assert message.startswith(f"{path}:{line}: a quoted cell that starts in this record is never closed"), message


def test_a_cell_spanning_lines_is_quoted_on_one_line_in_an_error(tmp_path):
    path = _write(tmp_path, f'{HEADER}\nc1,"conv\nx",8,8,3,4,3,3,1,1,1,1,1\n')
    assert _error(path) == (f"{path}:2: column 'kind' expected one of conv, linear, got 'conv\\nx'")


@pytest.mark.parametrize("value, said", [("9007199254740993", "<= 2147483647"),   # 2**53 + 1: a float rounds it
                                         ("1e200", "<= 2147483647"), ("8.0", None), ("1e3", None)])
def test_integers_are_read_exactly_and_bounded(tmp_path, value, said):
    path = _write(tmp_path, f"{HEADER}\n" + FC.replace("fc,linear,1,1,64,", f"fc,linear,1,1,{value},") + "\n")
    if said is None:
        (layer,) = read_layers_csv(path)
        assert layer.in_features == int(float(value))
    else:
        assert _error(path).startswith(f"{path}:2: column 'in_channels' expected an integer {said}, got '{value}'")


def test_an_alias_next_to_the_column_it_names_is_an_extra_column(tmp_path):
    path = _write(tmp_path, "name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,batch,batch_size\n"
                            "c1,conv,32,32,3,64,3,3,8,whatever\n")
    (row,) = read_layer_table(path).rows
    assert row.layer.batch == 8


def test_a_row_with_fewer_fields_than_the_header_is_refused(tmp_path):
    """A row that dropped one cell used to be padded at the end, its values shifted one column
    left: padding 1300, the measured cycles 0.8, and the row went into the fit."""
    header = "name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,stride,padding,measured_cycles"
    path = _write(tmp_path, f"{header}\nc1,conv,8,8,4,4,3,3,1,1,1200\nc2,conv,8,8,4,4,3,3,1,1300\n")
    assert _error(path).startswith(f"{path}:3: 10 fields but the header has 11")
    with pytest.raises(HardwareConfigError, match=r"t\.csv:3: 10 fields but the header has 11"):
        refs.measured_rows(path, Accelerator("a", 8, 8))


def test_spreadsheet_leftovers_are_skipped_not_misread(tmp_path):
    """A header with empty trailing cells, rows padded to it, and an all-empty row, as
    spreadsheets save them: read as if they were not there."""
    path = _write(tmp_path, f"{HEADER},,\n{FC},,\n,,,,,,,,,,,,,,\nfc2,linear,1,1,64,5,1,1,1,0,1,1,2,,\n")
    layers = read_layers_csv(path)
    assert [(l.name, l.out_features, l.batch) for l in layers] == [("fc", 10, 1), ("fc2", 5, 2)]
    # a value under an empty header cell is still an extra field
    bad = _write(tmp_path, f"{HEADER},,\n{FC},,7\n", "bad.csv")
    assert _error(bad).startswith(f"{bad}:2: 15 fields but the header has 13")


def test_a_non_utf8_byte_is_located_by_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n{FC}\n".encode() + "caf\u00e9,linear,1,1,64,10,1,1,1,0,1,1,1\n".encode("latin-1"))
    assert _error(path).startswith(f"{path}:3: not a UTF-8 text CSV")


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_extra_padding_column_reads_the_layer_torch_same_padding_traces(tmp_path):
    """A 4 x 4 kernel with padding='same' pads 1 row/column on top/left and 2 at the bottom/right;
    the CSV's extra_padding column describes it, and the layer written back keeps the column."""
    import torch
    from hwmodels.estimate import trace_layers
    from hwmodels.suites import layer_fields
    conv = torch.nn.Conv2d(8, 8, 4, padding="same", groups=8)
    (traced,) = trace_layers(conv, (8, 6, 5))
    path = _write(tmp_path, f"{HEADER},extra_padding\nsame,conv,6,5,8,8,4,4,1,1,1,8,1,1\n")
    (layer,) = read_layers_csv(path)
    assert (layer.out_h, layer.out_w) == tuple(conv(torch.zeros(1, 8, 6, 5)).shape[-2:]) == (6, 5)
    assert layer_fields(layer) == layer_fields(traced) and layer_fields(layer)["extra_padding"] == 1
    assert "extra_padding" not in layer_fields(read_layers_csv(_write(tmp_path, f"{HEADER}\n{FC}\n", "fc.csv"))[0])
    assert "extra_padding" not in refs.cache_key(trace_layers(torch.nn.Conv2d(8, 8, 3, padding="same"),
                                                              (8, 6, 5))[0], 16, 16, "ws", "3.0.0")


def test_a_fractional_default_batch_is_refused_not_rounded(tmp_path):
    path = _write(tmp_path, f"{HEADER.replace(',batch', '')}\n{FC[:-2]}\n")
    assert read_layers_csv(path, default_batch=3)[0].batch == 3
    with pytest.raises(HardwareConfigError, match=r"default batch must be an integer >= 1, got 2.5"):
        read_layers_csv(path, default_batch=2.5)   # was read as 2
