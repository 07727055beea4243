"""freshrec's updater sidecar: durable feedback intake (grpcio), sparse row fine-tuning, atomic
version publish and Triton reload. `python -m updater` or `freshrec updater` runs it;
`freshrec serve` starts it next to Triton. The wire contract is proto/freshrec_updater.proto."""
