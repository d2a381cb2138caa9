"""Event messages fit the API server's limit, which counts bytes (a failed build's log tail holds '…')."""

from kenv.kube import EVENT_MESSAGE_BYTES, event_message


def test_event_message_is_cut_to_bytes_without_splitting_a_character():
    text = "build failed; last log lines:\n" + "…" * 600
    cut = event_message(text)
    assert len(cut.encode()) <= EVENT_MESSAGE_BYTES < len(text.encode())
    assert text.startswith(cut) and cut.endswith("…")
    assert event_message("short") == "short"
