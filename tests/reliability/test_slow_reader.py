"""A client that stops reading its stream: the server's memory stays bounded and the stream
ends with an error in its protocol once `--max-unread-tokens` tokens wait for it."""
import json

from server_process import Server, UnreadStream, rss_kb, wait_for


def test_a_client_that_reads_nothing_is_cut_off_and_memory_stays_bounded(reliability_model, tmp_path):
    s = Server(["--model", reliability_model, "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.05",
                "--max-unread-tokens", "256"], str(tmp_path / "slow.log"))
    try:
        before = rss_kb(s.proc.pid)
        stream = UnreadStream(s.url, "/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 4000,
            "stream": True, "logprobs": True, "top_logprobs": 20, "temperature": 0})
        wait_for(lambda: s.metric("tokenmill:generation_tokens_total") > 0, 300, "the stream never started")
        # the engine stops the request: nothing runs, although it asked for 4,000 tokens
        wait_for(lambda: s.metric("tokenmill:num_requests_running") == 0, 300, "the unread stream was never stopped")
        assert s.metric("tokenmill:generation_tokens_total") < 4000
        grown_mb = (rss_kb(s.proc.pid) - before) / 1024
        assert grown_mb < 64, grown_mb  # the documented bound: one request's own output, not its copies
        text = stream.read_all()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        assert "error" in events[-1] and "did not read" in events[-1]["error"]["message"], text[-600:]
        generated = sum(1 for e in events if e.get("choices") and e["choices"][0]["delta"].get("content") is not None)
        assert generated < 4000
    finally:
        s.stop()
