"""The committed gRPC modules are what the committed .proto generates today."""

from updater.proto import generate


def test_generated_code_is_current(tmp_path):
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO_DIR / fresh.name
        assert fresh.read_text() == committed.read_text(), (
            f"{committed.name} is stale: run `python -m updater.proto.generate` and commit it")
