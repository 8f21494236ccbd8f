"""Per-key quotas: requests and tokens per minute, checked and charged in Redis at admission.

Each limit is a token bucket whose capacity is the per-minute limit. It
refills continuously at limit / 60 per second, so a key may burst up to its
per-minute limit and then gets the limit spread evenly over each minute. One Lua
script checks both buckets and charges both only when both have room, in one
Redis round trip, so a refused request changes nothing. The script reads the
clock with Redis `TIME`, so ingress replicas with skewed clocks agree.

Why not the `limits` package: it checks one limit per call, so a refusal by
the second limit would leave the first one charged, and its async Redis
storage runs on `coredis` rather than the `redis.asyncio` client the ingress uses.
"""

from __future__ import annotations

import math

import redis.asyncio as redis
import structlog

from shared.api_keys import ApiKeyRecord
from shared.events import RequestSpec

from services.ingress.errors import QuotaExceededError

log = structlog.get_logger(__name__)

# The estimate of prompt tokens: about 4 characters of English per token, the
# rule of thumb in OpenAI's help article "What are tokens and how to count them".
# NOTE: the embedded model's tokenizer makes about 2.6 characters per token
# (1,024 tokens are about 2,700 characters), so its prompts are undercharged by about a third.
CHARS_PER_TOKEN = 4
# A request that leaves `max_new_tokens` unset gets its variant's value, which
# the ingress does not know at admission. It is charged as 128 tokens, the value
# of the variants in `shared/config/experiments.yaml`.
# NOTE: a variant configured with more new tokens is undercharged for such requests.
UNSET_MAX_NEW_TOKENS_CHARGE = 128

# KEYS[1]: the key's quota hash. ARGV[1], ARGV[2]: requests and tokens per
# minute, 0 for unlimited. ARGV[3]: the request's token charge.
# Returns {0, 0} when the request was charged, else {the milliseconds until
# both buckets hold enough, the exceeded limits: 1 requests plus 2 tokens}. Each bucket stores its level and the time of that
# level in ms. A bucket refills completely within 60 s, so the hash expires
# 60 s after the last charge: a missing hash means full buckets.
_CHARGE_SCRIPT = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local costs = {1, tonumber(ARGV[3])}
local fields = {'requests', 'tokens'}
local levels = {}
local wait_ms = 0
local exceeded = 0
for i = 1, 2 do
  if limits[i] > 0 then
    local stored = redis.call('HMGET', KEYS[1], fields[i], fields[i] .. '_ms')
    local level = limits[i]
    if stored[1] then
      local elapsed_ms = math.max(0, now_ms - tonumber(stored[2]))
      level = math.min(limits[i], tonumber(stored[1]) + elapsed_ms * limits[i] / 60000)
    end
    levels[i] = level
    if level < costs[i] then
      wait_ms = math.max(wait_ms, math.ceil((costs[i] - level) * 60000 / limits[i]))
      exceeded = exceeded + i
    end
  end
end
if wait_ms > 0 then
  return {wait_ms, exceeded}
end
for i = 1, 2 do
  if limits[i] > 0 then
    redis.call('HSET', KEYS[1], fields[i], tostring(levels[i] - costs[i]), fields[i] .. '_ms', now_ms)
  end
end
redis.call('PEXPIRE', KEYS[1], 60000)
return {0, 0}
"""


def quota_key(key_id: str) -> str:
    return f"sluice:quota:{key_id}"


def estimated_tokens(spec: RequestSpec, prompt_chars: int) -> int:
    """Return the tokens charged at admission: the estimated prompt tokens plus `max_new_tokens`.

    Azure OpenAI charges its tokens-per-minute limit the same way, from an
    estimate of the prompt and the request's max_tokens, before generating
    ("Manage Azure OpenAI quota", learn.microsoft.com). The tokens actually
    generated are not charged afterwards.
    """
    prompt_tokens = math.ceil(prompt_chars / CHARS_PER_TOKEN)
    new_tokens = spec.params.max_new_tokens or UNSET_MAX_NEW_TOKENS_CHARGE
    return prompt_tokens + new_tokens


class QuotaLimiter:
    """Charges requests against their key's per-minute limits in Redis."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._charge = redis_client.register_script(_CHARGE_SCRIPT)

    async def charge(self, key: ApiKeyRecord, tokens: int) -> None:
        """Charge one request and `tokens` tokens to `key`, or raise `QuotaExceededError` (429) and charge nothing.

        A key without limits costs no Redis call. Raises `redis.exceptions.RedisError` when Redis fails.
        """
        if key.requests_per_minute is None and key.tokens_per_minute is None:
            return
        if key.tokens_per_minute is not None and tokens > key.tokens_per_minute:
            raise QuotaExceededError(
                "request_exceeds_token_limit",
                f"the request is charged {tokens} tokens (estimated prompt tokens plus max_new_tokens), more than "
                f"API key {key.key_id}'s limit of {key.tokens_per_minute} tokens per minute; "
                "lower max_new_tokens or shorten the prompt",
                retry_after_s=None,
            )
        arguments = [key.requests_per_minute or 0, key.tokens_per_minute or 0, tokens]
        wait_ms, exceeded = await self._charge(keys=[quota_key(key.key_id)], args=arguments)
        if int(wait_ms) > 0:
            self._reject(key, tokens, int(wait_ms), int(exceeded))

    def _reject(self, key: ApiKeyRecord, tokens: int, wait_ms: int, exceeded: int) -> None:
        retry_after_s = math.ceil(wait_ms / 1000)
        limits = _exceeded_limits_text(key, exceeded)
        log.info("quota_exceeded", key_id=key.key_id, tenant=key.tenant, tokens=tokens, retry_after_s=retry_after_s)
        raise QuotaExceededError(
            "rate_limit_exceeded",
            f"API key {key.key_id} has used its quota of {limits}; "
            f"retry after {retry_after_s} s (the Retry-After header)",
            retry_after_s=retry_after_s,
        )


# The charge script reports the limits a request exceeded as the sum of these bits.
_REQUESTS_EXCEEDED = 1
_TOKENS_EXCEEDED = 2


def _exceeded_limits_text(key: ApiKeyRecord, exceeded: int) -> str:
    """Name the limits in the script's `exceeded` bits, for example "60 requests per minute"."""
    limits = []
    if exceeded & _REQUESTS_EXCEEDED:
        limits.append(f"{key.requests_per_minute} requests per minute")
    if exceeded & _TOKENS_EXCEEDED:
        limits.append(f"{key.tokens_per_minute} tokens per minute")
    return " and ".join(limits)
