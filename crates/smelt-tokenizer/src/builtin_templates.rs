//! Chat templates for model files that carry none, in the families' published form.

/// Gemma 3 instruction-tuned models' template as published with the Hugging Face checkpoints
/// (`tokenizer_config.json` of google/gemma-3-*-it): a system message is folded into the
/// first user turn, the assistant is called "model", roles must alternate.
pub const GEMMA3: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// ChatML (`<|im_start|>role\n...<|im_end|>\n`), as used by Qwen, SmolLM and many others.
pub const CHATML: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Llama 3 Instruct's template as published with Meta-Llama-3-8B-Instruct.
pub const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}\
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// For models without a template or a known family (base models): the message contents, one
/// after another, separated by blank lines.
pub const PLAIN: &str = "{%- for message in messages %}{{ message['content'] }}\
{%- if not loop.last %}{{ '\\n\\n' }}{% endif %}{%- endfor %}";

/// The built-in template for a family name or a GGUF `general.architecture`.
pub fn builtin_source(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "gemma" | "gemma2" | "gemma3" | "gemma3_text" | "gemma3n" => Some(GEMMA3),
        "chatml" | "qwen" | "qwen2" | "qwen2moe" | "qwen3" | "qwen3moe" | "smollm" | "smollm2" => {
            Some(CHATML)
        }
        "llama3" | "llama" => Some(LLAMA3),
        "plain" => Some(PLAIN),
        _ => None,
    }
}
