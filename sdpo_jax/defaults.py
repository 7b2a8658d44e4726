"""The method's defaults, written once: the config schema (`config.base_config`) and the public functions'
keyword defaults (`StepSettings`, `divergences`, `teacher`, `reprompt`) all read these. Values: the paper's and
the official code's (docs/ALGORITHM.md §8)."""

OBJECTIVE = "sdpo"
HYBRID_LAMBDA = 0.9  # A = lambda A_GRPO + (1 - lambda) A_SDPO
LOSS_MODE = "topk"
TOPK = 100  # distillation top-K
ADD_TAIL = True
ALPHA = 0.5  # 0 forward KL, 1 reverse KL, between: generalized JSD
IS_CLIP = 2.0  # distillation importance-weight clip
ROLLOUT_IS_CLIP = 2.0  # rollout truncated importance sampling
AGGREGATION = "seq_mean_token_mean"
CLIP_LOW, CLIP_HIGH, DUAL_CLIP = 0.2, 0.28, 3.0  # PPO clips (GRPO and hybrid)
TEACHER_KIND = "ema"
EMA_RATE = 0.05
TRUST_REGION_MIX = 0.05
VOCAB_CHUNK = 8192  # vocabulary columns per chunk of the train step's loss
SEQ_CHUNK = 4096  # tokens (of the flattened batch) per chunk of the train step's loss
SUCCESS_THRESHOLD = 0.5  # reward at or above which a sample counts as a success
REPROMPT_MAX_LEN = 10240  # teacher prompt tokens at most
