"""The reference MLP's onnxruntime session as both peers open it: Berth's worker's session
options (docs/workers.md, "Threads"), one intra-op thread and no spin-waiting, which on a
few shared cores leaves them to the server's other work. Imported by the peers' model code
from beside it (the peers' environments have no Berth)."""

from __future__ import annotations

import onnxruntime as ort


def mlp_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
