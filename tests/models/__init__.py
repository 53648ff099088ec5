"""Tests of the model engines (vLLM, transformers) on tiny random-weight DeepSeek models.

The heavy ones need the models virtualenv (`bash .ci/models.sh`) and skip, saying
so, where torch, transformers or vLLM are missing; the plain ones run anywhere.
"""
