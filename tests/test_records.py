"""The record stream: NaN never breaks a stream, bad lines become error records."""
import io
import json

from xdxd import records


def test_nan_becomes_an_error_record():
    out = io.StringIO()
    failed = records.write_record({"id": "x", "candidates": [{"r1": float("nan")}]}, out)
    rec = json.loads(out.getvalue())
    assert failed and "NaN" in rec["error"] and rec["candidates"][0]["r1"] is None


def test_good_record_round_trip_and_bad_line():
    out = io.StringIO()
    assert not records.write_record({"id": "a", "cell": [5.0, 6, 7, 90, 90, 90]}, out)
    out.write("{not json\n")
    recs = list(records.read_records(io.StringIO(out.getvalue()), "f.jsonl"))
    assert recs[0]["id"] == "a" and "f.jsonl:2" in recs[1]["error"]
