"""The wire contract: model and tensor names, limits and the default endpoints, defined once for
configs, model.py files, the updater, the clients and the CLI."""

# where the services listen unless told otherwise: loopback only, never exposed by default
DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 8001      # tritonserver, KServe v2 over gRPC (what clients call)
DEFAULT_HTTP_PORT = 8000      # tritonserver, KServe v2 over HTTP
DEFAULT_METRICS_PORT = 8002   # tritonserver, Prometheus metrics
DEFAULT_UPDATER_PORT = 50051  # the updater sidecar: Feedback and Admin over gRPC
DEFAULT_UPDATER_METRICS_PORT = 8003  # the updater, Prometheus metrics (updater.metrics)
# the updater's access (updater.access): a bearer token in each call's metadata
TOKEN_ENV = "FRESHREC_TOKEN"  # where the updater and every freshrec command find the token
AUTH_HEADER, AUTH_SCHEME = "authorization", "Bearer "
# with a token, Triton's control APIs (model repository, config, statistics, ...) answer only
# calls carrying this header, whose value is derived from the token (updater.access)
TRITON_CONTROL_HEADER = "freshrec-control"
TRITON_RESTRICTED = "model-repository,model-config,shared-memory,statistics,trace,logging"
DEFAULT_REDIS_PREFIX = "freshrec"  # of every key freshrec keeps in Redis (redis_layout.RedisKeys)
DEFAULT_TRITON_URL = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"
DEFAULT_UPDATER_URL = f"{DEFAULT_HOST}:{DEFAULT_UPDATER_PORT}"

# models
RECOMMEND = "recommend"      # public entry point (ensemble over RETRIEVE)
RETRIEVE = "retrieve"        # python backend: id maps, gather/pool, tower call, score + top-K
USER_TOWER = "user_tower"    # python backend running the ONNX user tower with onnxruntime
TEXT_ENCODER = "text_encoder"  # python backend: tokenizers + ONNX MiniLM with onnxruntime

# recommend / retrieve inputs
USER_ID = "USER_ID"          # INT64 [1]
K = "K"                      # INT32 [1], optional, default DEFAULT_K
HISTORY = "HISTORY"          # INT64 [-1], optional, external item ids, most recent last
EXCLUDE = "EXCLUDE"          # INT64 [-1], optional, external item ids never to return
EXCLUDE_SEEN = "EXCLUDE_SEEN"  # BOOL [1], optional: also exclude the history used for the query
QUERY_TEXT = "QUERY_TEXT"    # BYTES [1], optional, UTF-8: blend (or, with no USER_ID, search) by text

# recommend / retrieve outputs
ITEM_IDS = "ITEM_IDS"        # INT64 [-1], best first
SCORES = "SCORES"            # FP32 [-1]
VERSION = "VERSION"          # INT64 [1], the retrieve version that answered
ARM = "ARM"                  # INT32 [1], its arm: 0 the serving one, 1 a canary (model_repository.canary)

# user_tower tensors: a pooled tower takes USER_EMB and HISTORY_EMB, a sequence tower USER_EMB,
# HISTORY_SEQ and HISTORY_MASK (model_repository.sequence_tower.sequence_inputs lays them out)
USER_EMB = "USER_EMB"        # FP32 [d], the user's row (zeros for an unknown user)
HISTORY_EMB = "HISTORY_EMB"  # FP32 [d], recency-weighted pool of recent item rows
HISTORY_SEQ = "HISTORY_SEQ"  # FP32 [L, d], the last L history item rows, right-aligned, 0 at pads
HISTORY_MASK = "HISTORY_MASK"  # FP32 [L], 1 at an item, 0 at a pad
QUERY = "QUERY"              # FP32 [d]

# text_encoder tensors
TEXT = "TEXT"                # BYTES [1], UTF-8, tokenised on the server
TEXT_EMB = "TEXT_EMB"        # FP32 [TEXT_DIM], L2-normalised mean-pooled MiniLM embedding

DEFAULT_K = 10
TEXT_DIM = 384               # all-MiniLM-L6-v2's hidden size
# Text limits, checked before any work: an empty (or all-whitespace) text, more than MAX_TEXT_CHARS
# characters or more than MAX_TEXT_TOKENS word pieces ([CLS] and [SEP] included; the model's own
# limit, sentence_bert_config.json) is INVALID_ARGUMENT naming the field, never silently truncated.
MAX_TEXT_CHARS = 2000
MAX_TEXT_TOKENS = 256
MAX_CATEGORY_CHARS = 200     # an added item's category (Admin.AddItems, `freshrec items add`)
# query = user_query + TEXT_WEIGHT * ||user_query|| * unit(projected text) when QUERY_TEXT comes
# with a user (row or history); without one the query is the projected text alone.
DEFAULT_TEXT_WEIGHT = 1.0
MAX_BATCH_SIZE = 64
