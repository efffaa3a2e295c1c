//! The translators' fast roads against their general ones: a stream's text deltas and a plain
//! text answer are read into borrowing structs and written out directly; whatever they read,
//! their bytes (or errors) must be the general road's. Golden, mutated and hand-written odd
//! inputs.

use serde_json::{Value, json};

use super::robustness::{Rng, mutate};
use super::{FIXTURES, parse};
use crate::translate::anthropic_to_openai::{AnthropicEvent, StreamTranslator};
use crate::translate::{TranslateError, anthropic_to_openai, openai_to_anthropic};

/// The Anthropic → OpenAI stream translator, and the same without its fast road for deltas:
/// every event must get the same bytes (or the same error) from both.
pub(super) struct Both {
    fast: openai_to_anthropic::StreamTranslator,
    general: openai_to_anthropic::StreamTranslator,
}

impl Both {
    pub(super) fn new(include_usage: bool) -> Self {
        let t = openai_to_anthropic::StreamTranslator::new(include_usage, 1);
        Self { general: t.clone().general_only(), fast: t }
    }

    pub(super) fn on_event(
        &mut self,
        event: &str,
        data: &[u8],
    ) -> Result<Vec<openai_to_anthropic::StreamOut>, crate::translate::TranslateError> {
        let fast = self.fast.on_event(event, data);
        let general = self.general.on_event(event, data);
        assert_eq!(fast, general, "{event}: {}", String::from_utf8_lossy(data));
        fast
    }

    pub(super) fn usage(&self) -> crate::translate::Usage {
        self.fast.usage()
    }

    pub(super) fn finished(&self) -> bool {
        self.fast.finished()
    }
}

/// An Anthropic answer through both roads of [`openai_to_anthropic::response_bytes`]: when the
/// fast one reads it, its bytes must be the general one's. Returns whether it did.
pub(super) fn answer_roads_agree(text: &str) -> bool {
    let a2o = openai_answer_roads_agree(text);
    anthropic_answer_roads_agree(text) || a2o
}

/// One OpenAI chunk through both roads of the OpenAI → Anthropic stream translator: when
/// [`StreamTranslator::text_delta`] reads it, [`StreamTranslator::on_chunk`] (from the same
/// state) must give exactly that one event and leave the translator in the same state.
pub(super) fn a2o_chunk(
    t: &mut StreamTranslator,
    data: &[u8],
) -> Result<Vec<AnthropicEvent>, TranslateError> {
    let start = t.clone();
    let Some(fast) = t.text_delta(data) else { return t.on_chunk(data) };
    let mut g = start;
    let general = g.on_chunk(data);
    let text = String::from_utf8_lossy(data);
    let events = general.as_ref().unwrap_or_else(|e| {
        panic!("the general road refused what the fast one read ({}): {text}", e.message)
    });
    assert_eq!(events.len(), 1, "{text}: {events:?}");
    assert_eq!(events[0].event, "content_block_delta", "{text}");
    let fast = String::from_utf8(fast).unwrap();
    assert_eq!(serde_json::to_string(&events[0].data).unwrap(), fast, "{text}");
    assert_eq!(format!("{g:?}"), format!("{t:?}"), "the roads left different states: {text}");
    general
}

/// [`answer_roads_agree`] for [`anthropic_to_openai::response_bytes`] (an OpenAI answer).
fn openai_answer_roads_agree(text: &str) -> bool {
    roads_agree(text, anthropic_to_openai::response_bytes(text), anthropic_to_openai::response)
}

/// [`answer_roads_agree`] for [`openai_to_anthropic::response_bytes`] (an Anthropic answer).
fn anthropic_answer_roads_agree(text: &str) -> bool {
    roads_agree(text, openai_to_anthropic::response_bytes(text, 7), |v| {
        openai_to_anthropic::response(v, 7)
    })
}

/// Whether the fast road read `text` (as `fast`); if it did, `general` must succeed on it and
/// serialize to the same bytes.
fn roads_agree(
    text: &str,
    fast: Option<Vec<u8>>,
    general: impl FnOnce(&Value) -> Result<Value, TranslateError>,
) -> bool {
    let Some(fast) = fast else { return false };
    let general = crate::translate::parse_json(text.as_bytes())
        .map_err(TranslateError::body)
        .and_then(|v| general(&v))
        .unwrap_or_else(|e| {
            panic!("the general road refused what the fast one read ({e}): {text}")
        });
    let general = serde_json::to_string(&general).unwrap();
    assert_eq!(String::from_utf8(fast).unwrap(), general, "{text}");
    true
}

#[test]
fn deltas_read_the_fast_way_serialize_as_the_general_way() {
    let texts = [
        "plain",
        "quote \" backslash \\ slash /",
        "controls \u{0} \u{1} \t \n \r \u{1f}",
        "unicode é 漢字 🌊 \u{2028} \u{2029} \u{fffd}",
        "</script>",
    ];
    for include_usage in [false, true] {
        let mut t = Both::new(include_usage);
        let start = json!({ "type": "message_start", "message": { "id": "msg_\"delta\":null", "model": "m\u{1}odel\"delta\":", "usage": { "input_tokens": 3 } } });
        let role = t.on_event("message_start", start.to_string().as_bytes()).unwrap();
        let [openai_to_anthropic::StreamOut::Chunk(role)] = &role[..] else { panic!("{role:?}") };
        let role: Value = serde_json::from_str(role).unwrap();
        assert_eq!(role["choices"][0]["delta"], json!({ "role": "assistant", "content": "" }));
        assert_eq!(role["model"], "m\u{1}odel\"delta\":");
        let block = json!({ "index": 0, "content_block": { "type": "text", "text": "" } });
        t.on_event("content_block_start", block.to_string().as_bytes()).unwrap();
        for text in texts {
            let delta = json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } });
            // As serde_json writes it, and with the escapes an upstream may choose instead.
            let escaped = delta.to_string().replace('é', "\\u00e9").replace('/', "\\/");
            for data in [delta.to_string(), escaped] {
                let out = t.on_event("content_block_delta", data.as_bytes()).unwrap();
                let [openai_to_anthropic::StreamOut::Chunk(chunk)] = &out[..] else {
                    panic!("{out:?}")
                };
                let chunk: Value = serde_json::from_str(chunk).unwrap();
                assert_eq!(chunk["choices"][0]["delta"]["content"], text);
                assert_eq!(chunk["id"], "chatcmpl-msg_\"delta\":null");
                assert_eq!(chunk["model"], "m\u{1}odel\"delta\":");
            }
        }
        let tool = json!({ "index": 1, "content_block": { "type": "tool_use", "id": "t", "name": "f", "input": {} } });
        t.on_event("content_block_start", tool.to_string().as_bytes()).unwrap();
        let args = json!({ "index": 1, "delta": { "type": "input_json_delta", "partial_json": "{\"a\": \"\\u00e9\"" } });
        assert_eq!(
            t.on_event("content_block_delta", args.to_string().as_bytes()).unwrap().len(),
            1
        );
    }
}

#[test]
fn odd_deltas_get_what_the_general_road_gives() {
    let deep = format!("{}0{}", "[".repeat(130), "]".repeat(130));
    let bodies = [
        // Arrays where objects belong (serde reads a struct from an array).
        r#"{"index":0,"delta":["text_delta","hi"]}"#.to_owned(),
        r#"{"index":1,"delta":["input_json_delta",null,"{\"a\""]}"#.to_owned(),
        r#"[0,{"type":"text_delta","text":"hi"}]"#.to_owned(),
        // Values a skipped field would not check, at the top level and inside the delta.
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi"},"x":1e400}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi","x":1e400}}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi"},"x":"\ud800"}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi","x":"\ud800"}}"#.to_owned(),
        format!(r#"{{"index":0,"delta":{{"type":"text_delta","text":"hi"}},"x":{deep}}}"#),
        format!(r#"{{"index":0,"delta":{{"type":"text_delta","text":"hi","x":{deep}}}}}"#),
        r#"{"index":0,"delta":{"type":"text_delta","text":"\ud800"}}"#.to_owned(),
        // Framing and duplicates.
        "\u{feff}{\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}".to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi"}} x"#.to_owned(),
        r#" {"index":0,"delta":{"type":"text_delta","text":"hi"}} "#.to_owned(),
        r#"{"index":0,"index":1,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","type":"x","text":"hi"}}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi","text":"ho"}}"#.to_owned(),
        // Indexes the general road does not read as a block index.
        r#"{"index":-1,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        r#"{"index":1.0,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        r#"{"index":18446744073709551616,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        r#"{"index":"0","delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        // Fields of other types, or missing.
        r#"{"index":0,"delta":{"type":"text_delta","text":7}}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":null}}"#.to_owned(),
        r#"{"index":0,"delta":{"type":7,"text":"hi"}}"#.to_owned(),
        r#"{"index":0,"delta":{"text":"hi"}}"#.to_owned(),
        r#"{"index":0,"delta":null}"#.to_owned(),
        r#"{"index":0}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#.to_owned(),
        r#"{"index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#.to_owned(),
        r#"{"index":1,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        // Whitespace, top-level types, empty deltas, escapes (owned strings).
        r#"{ "index" : 0 , "delta" : { "type" : "text_delta" , "text" : "hi" } }"#.to_owned(),
        r#"{"type":1,"index":0,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        r#"{"type":null,"index":0,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
        r#"{"index":0,"delta":{}}"#.to_owned(),
        r#"{}"#.to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hé "\ 
"}}"#
            .to_owned(),
        r#"{"index":0,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned(),
    ];
    for include_usage in [false, true] {
        let mut t = Both::new(include_usage);
        let start =
            json!({ "message": { "id": "m", "model": "claude", "usage": { "input_tokens": 1 } } });
        t.on_event("message_start", start.to_string().as_bytes()).unwrap();
        let text = json!({ "index": 0, "content_block": { "type": "text", "text": "" } });
        t.on_event("content_block_start", text.to_string().as_bytes()).unwrap();
        let tool = json!({ "index": 1, "content_block": { "type": "tool_use", "id": "t", "name": "f", "input": {} } });
        t.on_event("content_block_start", tool.to_string().as_bytes()).unwrap();
        for body in &bodies {
            // `Both` asserts that the two roads agree, errors included.
            let _ = t.on_event("content_block_delta", body.as_bytes());
        }
    }
}

#[test]
fn answers_read_the_fast_way_serialize_as_the_general_way() {
    // Anthropic answers (o2a) and OpenAI ones (a2o): the golden plain text ones take the fast
    // road, tool calls do not; mutated, whichever road each takes, they agree.
    let mut rng = Rng(0x0005_EED0_FA11_5AFE);
    for (kind, golden_fast) in [("o2a_response", 6), ("a2o_response", 3)] {
        let goldens: Vec<Value> = FIXTURES
            .iter()
            .map(|(name, text)| parse(name, text))
            .filter(|doc| doc["kind"] == kind)
            .map(|doc| doc["input"].clone())
            .collect();
        let fast = goldens.iter().filter(|v| answer_roads_agree(&v.to_string())).count();
        assert!(fast >= golden_fast, "{kind}: only {fast} golden answers took the fast road");
        let (mut tried, mut taken) = (0, 0);
        for golden in &goldens {
            for _ in 0..300 {
                let mut input = golden.clone();
                for _ in 0..1 + rng.below(2) {
                    mutate(&mut input, &mut rng);
                }
                tried += 1;
                taken += usize::from(answer_roads_agree(&input.to_string()));
            }
        }
        assert!(taken > tried / 10, "{kind}: the fast road read {taken} of {tried} mutated");
    }
}

#[test]
fn odd_openai_answers_get_what_the_general_road_gives() {
    let base = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    assert!(openai_answer_roads_agree(base), "the plain answer took the general road");
    // A real OpenAI answer's extra fields, and vLLM's.
    let real = base
        .replace(r#""refusal":null"#, r#""refusal":null,"annotations":[]"#)
        .replace(r#""total_tokens":5"#, r#""total_tokens":5,"prompt_tokens_details":{"cached_tokens":1,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}"#)
        .replace(r#""created":1"#, r#""created":1,"service_tier":"default","system_fingerprint":"fp_1""#);
    assert!(openai_answer_roads_agree(&real), "a real answer took the general road: {real}");
    let vllm = base
        .replace(r#""refusal":null"#, r#""refusal":null,"tool_calls":[],"reasoning_content":null,"function_call":null,"audio":null"#)
        .replace(r#""finish_reason":"stop""#, r#""finish_reason":"stop","stop_reason":null"#)
        .replace(r#""created":1"#, r#""created":1,"prompt_logprobs":null,"kv_transfer_params":null"#);
    assert!(openai_answer_roads_agree(&vllm), "a vLLM answer took the general road: {vllm}");
    let cases: Vec<String> = [
        (r#""content":"Hi""#, r#""content":"a\"b\\c\n\t\u0001 é 🌊 \u00e9 \ud83c\udf0a""#),
        (r#""content":"Hi""#, r#""content":"\ud800""#),
        (r#""content":"Hi""#, r#""content":"""#),
        (r#""content":"Hi""#, r#""content":null"#),
        (r#""content":"Hi""#, r#""content":5"#),
        (r#""content":"Hi""#, r#""content":[{"type":"text","text":"Hi"}]"#),
        (r#""content":"Hi""#, r#""content":"a","content":"b""#),
        (r#""refusal":null"#, r#""refusal":"No.""#),
        (r#""refusal":null"#, r#""refusal":"""#),
        (r#""content":"Hi","refusal":null"#, r#""content":"","refusal":"No.""#),
        (r#""refusal":null"#, r#""refusal":7"#),
        (r#""refusal":null"#, r#""tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]"#),
        (r#""refusal":null"#, r#""tool_calls":{}"#),
        (r#""refusal":null"#, r#""reasoning_content":"hm""#),
        (r#""refusal":null"#, r#""function_call":{"name":"f"}"#),
        (r#""finish_reason":"stop""#, r#""finish_reason":"length""#),
        (r#""finish_reason":"stop""#, r#""finish_reason":"tool_calls""#),
        (r#""finish_reason":"stop""#, r#""finish_reason":"content_filter""#),
        (r#""finish_reason":"stop""#, r#""finish_reason":null"#),
        (r#""finish_reason":"stop""#, r#""finish_reason":1"#),
        (r#""index":0"#, r#""index":1"#),
        (r#""index":0"#, r#""index":-1"#),
        (r#""index":0"#, r#""index":0.0"#),
        (r#""index":0,"#, ""),
        (r#""logprobs":null"#, r#""logprobs":{"content":[]}"#),
        (r#""message":{"role":"assistant","content":"Hi","refusal":null},"#, ""),
        (r#""message":{"role":"assistant","content":"Hi","refusal":null}"#, r#""message":null"#),
        (r#""id":"chatcmpl-1""#, r#""id":"""#),
        (r#""id":"chatcmpl-1""#, r#""id":"msg_x""#),
        (r#""id":"chatcmpl-1""#, r#""id":null"#),
        (r#""model":"gpt-x""#, r#""model":7"#),
        (r#""created":1"#, r#""created":1.5"#),
        (r#""created":1"#, r#""error":null"#),
        (r#""created":1"#, r#""error":{"message":"x"}"#),
        (r#""prompt_tokens":3"#, r#""prompt_tokens":3.0"#),
        (r#""prompt_tokens":3"#, r#""prompt_tokens":-3"#),
        (r#""prompt_tokens":3"#, r#""prompt_tokens":null"#),
        (r#""prompt_tokens":3"#, r#""prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":5,"cache_write_tokens":2}"#),
        (r#""prompt_tokens":3"#, r#""prompt_tokens":3,"prompt_tokens_details":null"#),
        (r#""prompt_tokens":3"#, r#""usage":{"prompt_tokens":9}"#),
        (r#""usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}"#, r#""usage":null"#),
        (r#""usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}"#, r#""usage":[]"#),
        (r#"[{"index":0"#, r#"[{"index":1,"message":{"content":"other"}},{"index":0"#),
        (r#"[{"index":0"#, r#"[{"index":2,"message":{"content":"first"}},{"index":1"#),
        (r#""choices":[{"#, r#""choices":[],"x":[{"#),
        (r#","#, " ,\n\t"),
    ]
    .iter()
    .map(|(from, to)| base.replacen(from, to, 1))
    .chain([format!(" {base} "), "{}".into(), r#"{"choices":[]}"#.into(), r#"{"choices":[{}]}"#.into(), base[..base.len() - 1].into()])
    .collect();
    for text in &cases {
        openai_answer_roads_agree(text);
    }
    for text in [
        r#"[null,null,null,null,[{"message":{"content":"hi"}}]]"#,
        r#"{"id":"c","model":"m","choices":[[0,[null,"hi"]]]}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"message":[null,"hi"]}]}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"message":{"content":"hi"}}],"usage":[9,2,11,[4,1]]}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"message":{"content":"hi"}}],"usage":{"prompt_tokens_details":[4,1]}}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"message":{"content":"hi"}}],"usage":{"completion_tokens_details":[1]}}"#,
    ] {
        assert!(anthropic_to_openai::response_bytes(text).is_none(), "{text}");
        openai_answer_roads_agree(text);
    }
}

#[test]
fn odd_answers_get_what_the_general_road_gives() {
    let base = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":2}}"#;
    assert!(answer_roads_agree(base), "the plain answer took the general road");
    // A real answer's full usage, and the nulls it carries.
    let real = base.replace(
        r#""usage":{"input_tokens":3,"output_tokens":2}"#,
        r#""usage":{"input_tokens":3,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":2,"service_tier":"standard"},"container":null"#,
    );
    assert!(answer_roads_agree(&real), "a real answer took the general road: {real}");
    let cases: Vec<String> = [
        // Texts needing escapes, and characters that need none.
        (r#""text":"Hi""#, r#""text":"a\"b\\c\n\t\u0001 é 🌊 \u00e9 \ud83c\udf0a </x>""#),
        (r#""text":"Hi""#, r#""text":"\ud800""#),
        (r#""text":"Hi""#, r#""text":"""#),
        (r#""text":"Hi""#, r#""text":null"#),
        (r#""text":"Hi""#, r#""text":5"#),
        (r#""text":"Hi""#, r#""text":"a","text":"b""#),
        (r#""text":"Hi""#, r#""text":"Hi","citations":[]"#),
        (r#""text":"Hi""#, r#""text":"Hi","citations":null"#),
        // Blocks of other kinds, or none.
        (
            r#"{"type":"text","text":"Hi"}"#,
            r#"{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"Hi"}"#,
        ),
        (
            r#"{"type":"text","text":"Hi"}"#,
            r#"{"type":"future"},{"type":"text","text":"Hi"},{"type":"text","text":" there"}"#,
        ),
        (r#"{"type":"text","text":"Hi"}"#, r#"{"type":"tool_use"}"#),
        (r#"{"type":"text","text":"Hi"}"#, r#"{"text":"Hi"}"#),
        (r#"{"type":"text","text":"Hi"}"#, r#""Hi""#),
        (r#"[{"type":"text","text":"Hi"}]"#, "[]"),
        (r#"[{"type":"text","text":"Hi"}]"#, "null"),
        (r#"[{"type":"text","text":"Hi"}]"#, r#"{"type":"text"}"#),
        // Ids, models and stop reasons.
        (r#""id":"msg_1""#, r#""id":"""#),
        (r#""id":"msg_1""#, r#""id":null"#),
        (r#""id":"msg_1""#, r#""id":"chatcmpl-x""#),
        (r#""id":"msg_1""#, r#""id":7"#),
        (r#""model":"claude-x""#, r#""model":null"#),
        (r#""model":"claude-x""#, r#""model":"a\"b""#),
        (r#""stop_reason":"end_turn""#, r#""stop_reason":null"#),
        (r#""stop_reason":"end_turn""#, r#""stop_reason":"max_tokens""#),
        (r#""stop_reason":"end_turn""#, r#""stop_reason":"tool_use""#),
        (r#""stop_reason":"end_turn""#, r#""stop_reason":"refusal""#),
        (r#""stop_reason":"end_turn""#, r#""stop_reason":["x"]"#),
        (r#""type":"message""#, r#""type":"error""#),
        (r#""type":"message""#, r#""type":null"#),
        (r#""stop_sequence":null"#, r#""stop_sequence":"END""#),
        (r#""stop_sequence":null"#, r#""stop_sequence":1e999"#),
        (r#""stop_sequence":null"#, r#""container":{"id":"c"}"#),
        (r#""stop_sequence":null"#, r#""extra":1"#),
        // Counts: floats, negatives, huge, null, strings, a usage of another shape.
        (r#""input_tokens":3"#, r#""input_tokens":3.0"#),
        (r#""input_tokens":3"#, r#""input_tokens":-3"#),
        (r#""input_tokens":3"#, r#""input_tokens":18446744073709551615"#),
        (r#""input_tokens":3"#, r#""input_tokens":18446744073709551616"#),
        (r#""input_tokens":3"#, r#""input_tokens":null"#),
        (r#""input_tokens":3"#, r#""input_tokens":"3""#),
        (r#""input_tokens":3"#, r#""usage":{"output_tokens":1}"#),
        (r#""usage":{"input_tokens":3,"output_tokens":2}"#, r#""usage":null"#),
        (r#""usage":{"input_tokens":3,"output_tokens":2}"#, r#""usage":5"#),
        (
            r#""usage":{"input_tokens":3,"output_tokens":2}"#,
            r#""usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":9}"#,
        ),
        (r#""role":"assistant""#, r#""role":1"#),
        (r#""role":"assistant""#, r#""role":"assistant","role":"user""#),
        // Whitespace and key order.
        (r#","#, " ,\n\t"),
    ]
    .iter()
    .map(|(from, to)| base.replacen(from, to, 1))
    .chain([
        format!(" {base} "),
        "{}".into(),
        "[]".into(),
        "null".into(),
        base[..base.len() - 1].into(),
    ])
    .collect();
    for text in &cases {
        // Asserts the two roads agree whenever the fast one reads the answer.
        answer_roads_agree(text);
    }
    // Arrays where objects belong: a derived struct reads them field by field, a `Value`
    // lookup finds nothing (helper-21's counterexamples).
    for text in [
        r#"[null,null,null,null,[{"type":"text","text":"hi"}]]"#,
        r#"{"id":"msg_1","model":"m","content":[["text","hi"]]}"#,
        r#"{"id":"msg_1","model":"m","content":[],"usage":[5,7]}"#,
        r#"{"id":"msg_1","model":"m","content":[],"usage":{"cache_creation":[1,2]}}"#,
    ] {
        assert!(openai_to_anthropic::response_bytes(text, 7).is_none(), "{text}");
        answer_roads_agree(text);
    }
}

/// `chunk` with `delta` as its choice's delta and `extra` spliced into the choice and the chunk.
fn openai_chunk(delta: &str, choice_extra: &str, chunk_extra: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-x","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null{choice_extra}}}]{chunk_extra}}}"#
    )
}

#[test]
fn openai_chunks_read_the_fast_way_give_the_general_event() {
    // Golden streams: their text chunks after the first (which opens the block) take the fast
    // road. (Mutated golden streams go through both roads in `robustness`.)
    let mut fast = 0;
    for (name, text) in FIXTURES {
        let doc = parse(name, text);
        if doc["kind"] != "a2o_stream" {
            continue;
        }
        let mut t = StreamTranslator::new(5);
        for chunk in doc["input"].as_array().unwrap() {
            let data = serde_json::to_vec(chunk).unwrap();
            fast += usize::from(t.text_delta(&data).is_some());
            let _ = a2o_chunk(&mut t, &data);
        }
    }
    assert!(fast >= 1, "no golden chunk took the fast road");

    // Odd chunks, each after a stream whose text block is open.
    let mut open = StreamTranslator::new(5);
    a2o_chunk(&mut open, openai_chunk(r#"{"role":"assistant","content":""}"#, "", "").as_bytes())
        .unwrap();
    a2o_chunk(&mut open, openai_chunk(r#"{"content":"Hi"}"#, "", "").as_bytes()).unwrap();
    let plain = openai_chunk(r#"{"content":" there"}"#, "", "");
    assert!(open.text_delta(plain.as_bytes()).is_some(), "a text chunk took the general road");
    let real = openai_chunk(
        r#"{"content":" there"}"#,
        r#","stop_reason":null"#,
        r#","usage":null,"system_fingerprint":"fp","service_tier":"default","obfuscation":"x1""#,
    );
    assert!(open.text_delta(real.as_bytes()).is_some(), "a real chunk took the general road");
    let cases = [
        openai_chunk(r#"{"content":"a\"b\\c\n\u0001 é 🌊 \u00e9 \ud83c\udf0a"}"#, "", ""),
        openai_chunk(r#"{"content":"\ud800"}"#, "", ""),
        openai_chunk(r#"{"content":""}"#, "", ""),
        openai_chunk(r#"{"content":null}"#, "", ""),
        openai_chunk(r#"{"content":5}"#, "", ""),
        openai_chunk(r#"{"content":"a","content":"b"}"#, "", ""),
        openai_chunk(
            r#"{"content":"a","role":"assistant","refusal":null,"tool_calls":[]}"#,
            "",
            "",
        ),
        openai_chunk(r#"{"content":"a","reasoning_content":"hm"}"#, "", ""),
        openai_chunk(r#"{"refusal":"No."}"#, "", ""),
        openai_chunk(r#"{"content":"a","refusal":"No."}"#, "", ""),
        openai_chunk(
            r#"{"content":"a","tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}"#,
            "",
            "",
        ),
        openai_chunk(
            r#"{"content":"a"}"#,
            "",
            r#","usage":{"prompt_tokens":1,"completion_tokens":2}"#,
        ),
        openai_chunk(r#"{"content":"a"}"#, "", r#","error":{"message":"x"}"#),
        openai_chunk(r#"{"content":"a"}"#, "", r#","extra":1"#),
        openai_chunk(r#"{"content":"a"}"#, "", r#","created":1.5"#),
        openai_chunk(r#"{"content":"a"}"#, r#","finish_reason":"stop""#, "").replacen(
            r#""finish_reason":null,"#,
            "",
            1,
        ),
        openai_chunk(r#"{"content":"a"}"#, "", "").replace(r#""index":0"#, r#""index":1"#),
        openai_chunk(r#"{"content":"a"}"#, "", "").replace(r#""index":0"#, r#""index":"0""#),
        openai_chunk(r#"{"content":"a"}"#, "", "").replace(r#""index":0,"#, ""),
        openai_chunk(r#"{"content":"a"}"#, "", "")
            .replace(r#""logprobs":null"#, r#""logprobs":{"content":[]}"#),
        openai_chunk(r#"{"content":"a"}"#, "", "")
            .replace(r#""choices":[{"#, r#""choices":[{"index":1,"delta":{"content":"b"}},{"#),
        openai_chunk(r#"{"content":"a"}"#, "", "")
            .replace(r#""choices":[{"#, r#""choices":[],"x":[{"#),
        openai_chunk(r#"{"content":"a"}"#, "", "").replace(',', " ,\n\t"),
        r#"{"choices":[{"delta":{"content":"a"}}]}"#.to_owned(),
        "[]".to_owned(),
        "{}".to_owned(),
        // Arrays where objects belong (helper-21's counterexamples).
        r#"[null,null,null,null,null,null,null,[{"delta":{"content":"x"}}]]"#.to_owned(),
        r#"{"id":"c","choices":[[0,{"content":"x"}]]}"#.to_owned(),
        r#"{"id":"c","choices":[{"index":0,"delta":["x"]}]}"#.to_owned(),
    ];
    for case in &cases[cases.len() - 3..] {
        assert!(open.text_delta(case.as_bytes()).is_none(), "{case}");
    }
    for case in &cases {
        let _ = a2o_chunk(&mut open.clone(), case.as_bytes());
    }
    // After a finish reason, or before any block, text takes the general road.
    let mut done = open.clone();
    a2o_chunk(
        &mut done,
        openai_chunk("{}", r#","finish_reason":"stop""#, "")
            .replacen(r#""finish_reason":null,"#, "", 1)
            .as_bytes(),
    )
    .unwrap();
    assert!(done.text_delta(plain.as_bytes()).is_none());
    assert!(StreamTranslator::new(5).text_delta(plain.as_bytes()).is_none());
}
