//! Stop-reason ⇄ finish-reason maps.
//!
//! Anthropic `stop_reason` (`types/stop_reason.py`) → OpenAI `finish_reason`, as LiteLLM's
//! `_FINISH_REASON_MAP` does, plus tidegate's choices for the reasons OpenAI has no word for:
//!
//! | Anthropic | OpenAI | why |
//! |---|---|---|
//! | `end_turn`, `stop_sequence` | `stop` | |
//! | `max_tokens` | `length` | |
//! | `model_context_window_exceeded` | `length` | output was cut by a limit, like `length` |
//! | `tool_use` | `tool_calls` | |
//! | `refusal` | `content_filter` | the model declined for safety reasons |
//! | `pause_turn` | `stop` | a server-tool turn paused; the text so far is complete |
//! | anything else / missing | `stop` | unknown reasons must not break clients |
//!
//! The reverse map (OpenAI upstream → Anthropic client): `stop` → `end_turn` (OpenAI does not say
//! whether a stop sequence matched, so `stop_sequence` is never produced), `length` →
//! `max_tokens`, `tool_calls` and the deprecated `function_call` → `tool_use`, `content_filter` →
//! `refusal`, anything else → `end_turn`. A message with `tool_use` blocks whose reason would be
//! `end_turn` ends with `tool_use` instead ([`anthropic_stop_reason_for`]): OpenAI answers a forced
//! tool choice with `stop` (so do vLLM and SGLang), and an Anthropic client's tool runner treats
//! `end_turn` as final and never runs the tools.

/// OpenAI `finish_reason` for an Anthropic `stop_reason`.
pub fn openai_finish_reason(anthropic_stop_reason: &str) -> &'static str {
    match anthropic_stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and unknown reasons
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`.
pub fn anthropic_stop_reason(openai_finish_reason: &str) -> &'static str {
    match openai_finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        // stop, and unknown reasons
        _ => "end_turn",
    }
}

/// Anthropic `stop_reason` for a message, given whether it has `tool_use` blocks.
pub fn anthropic_stop_reason_for(openai_finish_reason: &str, has_tool_use: bool) -> &'static str {
    match anthropic_stop_reason(openai_finish_reason) {
        "end_turn" if has_tool_use => "tool_use",
        other => other,
    }
}
