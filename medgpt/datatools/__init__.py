"""Data tools run before training (tools/convert_dataset.py, validate_jsonl.py, dedup.py, check_contamination.py,
scan_phi.py): they read rows exactly as training does (medgpt.data.numbered_rows) and share the text helpers here."""
