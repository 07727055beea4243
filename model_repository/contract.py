"""The wire contract: model and tensor names, defined once for configs, model.py files and clients."""

# models
RECOMMEND = "recommend"      # public entry point (ensemble over RETRIEVE)
RETRIEVE = "retrieve"        # python backend: id maps, gather/pool, tower call, score + top-K
USER_TOWER = "user_tower"    # python backend running the ONNX user tower with onnxruntime

# recommend / retrieve inputs
USER_ID = "USER_ID"          # INT64 [1]
K = "K"                      # INT32 [1], optional, default DEFAULT_K
HISTORY = "HISTORY"          # INT64 [-1], optional, external item ids, most recent last
EXCLUDE = "EXCLUDE"          # INT64 [-1], optional, external item ids never to return
EXCLUDE_SEEN = "EXCLUDE_SEEN"  # BOOL [1], optional: also exclude the history used for the query

# recommend / retrieve outputs
ITEM_IDS = "ITEM_IDS"        # INT64 [-1], best first
SCORES = "SCORES"            # FP32 [-1]
VERSION = "VERSION"          # INT64 [1], the retrieve version that answered

# user_tower tensors
USER_EMB = "USER_EMB"        # FP32 [d], the user's row (zeros for an unknown user)
HISTORY_EMB = "HISTORY_EMB"  # FP32 [d], recency-weighted pool of recent item rows
QUERY = "QUERY"              # FP32 [d]

DEFAULT_K = 10
MAX_BATCH_SIZE = 64
