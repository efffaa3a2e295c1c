//! Tests of the peeks: OpenAI chunks and bodies, Anthropic events and bodies, odd usage.

mod openai {
    use super::super::*;

    #[test]
    fn chunk_kinds() {
        assert_eq!(chunk(b"[DONE]"), Some(ChunkPeek::Done));
        assert!(
            matches!(chunk(br#"{"error":{"message":"boom"}}"#), Some(ChunkPeek::Error(m)) if m == "boom")
        );
        let role = chunk(br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#);
        assert!(matches!(role, Some(ChunkPeek::Chunk { content: false, .. })));
        let text = chunk(br#"{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#);
        assert!(matches!(text, Some(ChunkPeek::Chunk { content: true, usage: None, .. })));
        let tool = chunk(br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#);
        assert!(matches!(tool, Some(ChunkPeek::Chunk { content: true, .. })));
        let usage = chunk(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}"#);
        assert_eq!(
            usage,
            Some(ChunkPeek::Chunk {
                content: false,
                finish: None,
                usage: Some(Usage { input: 3, output: 4, cached_input: 1 }),
                usage_only: true,
                text: None,
                tool: false,
                finishes: 0,
            })
        );
        assert_eq!(chunk(b"{\"choi"), None);
        assert_eq!(chunk(b"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}"), None);
        // Invalid UTF-8 in a field we do not read is passed through, not judged.
        let skipped = chunk(b"{\"id\":\"c\xff\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}");
        assert!(matches!(skipped, Some(ChunkPeek::Chunk { content: true, .. })));
        assert_eq!(chunk(b"{}"), None);
    }

    #[test]
    fn bodies() {
        assert!(matches!(body(br#"{"error":{"message":"x"}}"#, false), Some(BodyPeek::Error(_))));
        assert_eq!(body(br#"{"id":"x"}"#, false), None);
        assert_eq!(body(b"<html>", false), None);
        let ok = body(br#"{"choices":[{"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#, false);
        assert_eq!(
            ok,
            Some(BodyPeek::Ok {
                usage: Some(Usage { input: 1, output: 2, cached_input: 0 }),
                finish: Some("length".into())
            })
        );
        assert!(matches!(
            body(br#"{"data":[],"usage":{"prompt_tokens":1}}"#, true),
            Some(BodyPeek::Ok { .. })
        ));
        assert_eq!(body(br#"{"data":{}}"#, true), None);
        // An array is no answer, though a derived struct would read one field by field.
        assert_eq!(body(br#"[null,[{"finish_reason":"stop"}]]"#, false), None);
        assert_eq!(chunk(br#"[null,[{"delta":{"content":"x"}}]]"#), None);
        let skipped = body(
            b"{\"id\":\"x\xff\",\"choices\":[{\"message\":{\"content\":\"\xfe\"},\"finish_reason\":\"stop\"}]}",
            false,
        );
        assert_eq!(skipped, Some(BodyPeek::Ok { usage: None, finish: Some("stop".into()) }));
    }

    #[test]
    fn odd_usage_is_read_leniently_not_as_a_malformed_answer() {
        // (usage as sent, what it reads as): counts as the translators read them; a usage
        // with no readable count, or not an object, is no usage (the estimate is billed).
        let cases = [
            (r#"{"prompt_tokens":-1,"completion_tokens":2}"#, Some((0, 2, 0))),
            (r#"{"prompt_tokens":null,"completion_tokens":null}"#, None),
            (r#"{"prompt_tokens":12.0,"completion_tokens":2.5}"#, Some((12, 0, 0))),
            (r#"{"prompt_tokens":"12","completion_tokens":[1],"total_tokens":{}}"#, None),
            (r#"{}"#, None),
            (r#"{"prompt_tokens":18446744073709551616,"completion_tokens":3}"#, Some((0, 3, 0))),
            (r#"{"prompt_tokens":0,"completion_tokens":0}"#, Some((0, 0, 0))),
            (
                r#"{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":-1}}"#,
                Some((5, 0, 0)),
            ),
            (r#"{"prompt_tokens":5,"prompt_tokens_details":[2]}"#, Some((5, 0, 0))),
            (r#"{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":2}}"#, Some((5, 0, 2))),
            ("[5,7]", None),
            ("5", None),
            (r#""x""#, None),
        ];
        for (usage, want) in cases {
            let want =
                want.map(|(input, output, cached_input)| Usage { input, output, cached_input });
            let data = format!(r#"{{"choices":[{{"finish_reason":"stop"}}],"usage":{usage}}}"#);
            let read = body(data.as_bytes(), false);
            assert_eq!(read, Some(BodyPeek::Ok { usage: want, finish: Some("stop".into()) }));
            // The usage chunk: stripped for clients that did not ask (usage_only) whatever its
            // usage holds.
            let data = format!(r#"{{"choices":[],"usage":{usage}}}"#);
            let read = chunk(data.as_bytes());
            assert!(
                matches!(read, Some(ChunkPeek::Chunk { usage_only: true, usage, .. }) if usage == want),
                "{usage}: {read:?}"
            );
            // Readable counts read as the translators read them.
            if let Some(w) = want {
                let t = crate::translate::Usage::from_openai(&serde_json::from_str(usage).unwrap());
                assert_eq!(
                    (t.input, t.output, t.cached_input),
                    (w.input, w.output, w.cached_input)
                );
            }
        }
        // A number serde_json cannot read (out of range) is malformed JSON, as before.
        let out_of_range =
            r#"{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":1e999}}"#;
        assert_eq!(body(out_of_range.as_bytes(), false), None);
        // `null` is no usage and no usage chunk.
        let null = chunk(br#"{"choices":[],"usage":null}"#);
        assert!(matches!(null, Some(ChunkPeek::Chunk { usage_only: false, usage: None, .. })));
    }
}

mod anthropic {
    use super::super::*;

    #[test]
    fn anthropic_events() {
        let start = anthropic_event(Some("message_start"), br#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}"#);
        assert_eq!(
            start,
            Some(ChunkPeek::Chunk {
                content: false,
                finish: None,
                usage: Some(Usage { input: 15, output: 1, cached_input: 5 }),
                usage_only: false,
                text: None,
                tool: false,
                finishes: 0,
            })
        );
        let text = anthropic_event(Some("content_block_delta"), br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#);
        assert!(matches!(text, Some(ChunkPeek::Chunk { content: true, .. })));
        let delta = anthropic_event(Some("message_delta"), br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#);
        assert!(
            matches!(delta, Some(ChunkPeek::Chunk { content: true, finish: Some(ref f), finishes: 1, .. }) if f == "end_turn")
        );
        assert_eq!(
            anthropic_event(Some("message_stop"), br#"{"type":"message_stop"}"#),
            Some(ChunkPeek::Done)
        );
        assert!(
            matches!(anthropic_event(Some("error"), br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#), Some(ChunkPeek::Error(m)) if m == "Overloaded")
        );
        assert!(matches!(
            anthropic_event(Some("brand_new_event"), b"{}"),
            Some(ChunkPeek::Chunk { content: false, .. })
        ));
        assert_eq!(anthropic_event(Some("message_start"), b"{\"type\":"), None);
        // Cumulative usage: the latest output count wins, input from message_start stays.
        let merged = merge_usage(
            Some(Usage { input: 15, output: 1, cached_input: 5 }),
            Some(Usage { input: 0, output: 7, cached_input: 0 }),
        );
        assert_eq!(merged, Some(Usage { input: 15, output: 7, cached_input: 5 }));
    }

    #[test]
    fn anthropic_bodies() {
        let ok = anthropic_body(br#"{"type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":4}}"#);
        assert_eq!(
            ok,
            Some(BodyPeek::Ok {
                usage: Some(Usage { input: 3, output: 4, cached_input: 0 }),
                finish: Some("end_turn".into())
            })
        );
        assert!(matches!(
            anthropic_body(br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#),
            Some(BodyPeek::Error(_))
        ));
        assert_eq!(anthropic_body(br#"{"choices":[]}"#), None);
        assert_eq!(anthropic_body(br#"["message",[],"end_turn"]"#), None);
        // Odd counts read leniently; huge ones saturate instead of overflowing.
        let odd = anthropic_body(br#"{"type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":-3,"output_tokens":4.0,"cache_read_input_tokens":null,"cache_creation_input_tokens":"2"}}"#);
        assert_eq!(
            odd,
            Some(BodyPeek::Ok {
                usage: Some(Usage { input: 0, output: 4, cached_input: 0 }),
                finish: Some("end_turn".into())
            })
        );
        let huge = anthropic_body(br#"{"type":"message","content":[],"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":7}}"#);
        assert!(
            matches!(
                huge,
                Some(BodyPeek::Ok {
                    usage: Some(Usage { input: u64::MAX, cached_input: 7, .. }),
                    ..
                })
            ),
            "{huge:?}"
        );
        let not_object = anthropic_event(
            Some("message_delta"),
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":[7]}"#,
        );
        assert!(matches!(not_object, Some(ChunkPeek::Chunk { usage: None, .. })), "{not_object:?}");
        let skipped = anthropic_body(
            b"{\"type\":\"message\",\"id\":\"m\xff\",\"content\":[{\"type\":\"text\",\"text\":\"\xfe\"}],\"stop_reason\":\"end_turn\"}",
        );
        assert_eq!(skipped, Some(BodyPeek::Ok { usage: None, finish: Some("end_turn".into()) }));
    }
}

mod bench_body {
    use super::super::*;

    #[test]
    fn a_full_anthropic_message_with_text_content() {
        let body = br#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench-model","content":[{"type":"text","text":"The tide rises and the gate holds steady."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":9}}"#;
        assert!(
            matches!(anthropic_body(body), Some(BodyPeek::Ok { .. })),
            "{:?}",
            anthropic_body(body)
        );
    }
}

#[test]
fn error_events_keep_an_overloaded_or_rate_limited_upstream() {
    use crate::error::ErrorCode;
    for (data, want) in [
        (
            &br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#[..],
            ErrorCode::Overloaded,
        ),
        (
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            ErrorCode::RateLimited,
        ),
        (
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"x"}}"#,
            ErrorCode::RateLimited,
        ),
        (
            br#"{"error":{"message":"boom","type":"server_error","code":null}}"#,
            ErrorCode::UpstreamUnavailable,
        ),
        (b"not json", ErrorCode::UpstreamUnavailable),
    ] {
        assert_eq!(super::error_code(data), want, "{}", String::from_utf8_lossy(data));
    }
}
