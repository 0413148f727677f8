"""A web chat page for a trained model: multi-turn, streamed answers, a system prompt box, sampling sliders and a
clear button. Same model flags as openai_api.py; listens on 127.0.0.1 unless --host says otherwise.

    python gradio_demo.py --base_model merged-sft                       # then open http://127.0.0.1:7860
    python gradio_demo.py --base_model merged-pt --lora_model outputs-sft --host 0.0.0.0 --port 7860
"""

import html
import os
from dataclasses import dataclass, field

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a hospital network may not reach the internet

from medgpt import args  # noqa: E402
from medgpt.engine import ChatEngine, EngineArguments  # noqa: E402
from medgpt.errors import run_cli  # noqa: E402
from medgpt.prompts import with_system  # noqa: E402


@dataclass
class DemoArguments:
    system_prompt: str = field(default="", metadata={"help": "Initial text of the system prompt box."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0 = every interface)."})
    port: int = field(default=7860, metadata={"help": "TCP port."})
    max_new_tokens: int = field(default=512, metadata={"help": "Initial answer length limit."})


def build_demo(engine: ChatEngine, title: str, system_prompt: str = "", max_new_tokens: int = 512):
    import gradio as gr

    def respond(message: str, history: list, turns: list, system: str, temperature: float, top_p: float, length: int):
        """Stream an answer into the chat. `turns` keeps the raw conversation; the chat shows it with < and >
        escaped, so that text such as <think> or <tool_call> is displayed instead of being taken for HTML."""
        if not message.strip():
            yield "", history, turns
            return
        conversation = with_system([*turns, {"role": "user", "content": message}], system)
        history = [*history, {"role": "user", "content": html.escape(message, quote=False)}]
        history.append({"role": "assistant", "content": ""})
        answer = ""
        for piece in engine.stream(conversation, temperature=temperature, top_p=top_p, max_new_tokens=int(length)):
            answer += piece
            history[-1]["content"] = html.escape(answer, quote=False)
            yield "", history, turns
        yield "", history, [*turns, {"role": "user", "content": message}, {"role": "assistant", "content": answer}]

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}")
        system = gr.Textbox(label="System prompt", value=system_prompt, lines=2)
        chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chatbot")
        turns = gr.State([])
        message = gr.Textbox(label="Message", placeholder="Ask a medical question and press Enter", elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear", elem_id="clear")
        with gr.Accordion("Sampling", open=False):
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            length = gr.Slider(16, max(2048, max_new_tokens), value=max_new_tokens, step=16, label="Max new tokens")
        inputs = [message, chatbot, turns, system, temperature, top_p, length]
        message.submit(respond, inputs, [message, chatbot, turns])
        send.click(respond, inputs, [message, chatbot, turns])
        clear.click(lambda: ([], [], ""), None, [chatbot, turns, message])
    return demo


def main(argv: list[str] | None = None) -> None:
    engine_args, demo_args = args.parse((EngineArguments, DemoArguments), argv)
    engine = ChatEngine.from_args(engine_args)
    title = f"Medical chat: {engine_args.name}"
    demo = build_demo(engine, title, demo_args.system_prompt, demo_args.max_new_tokens)
    demo.queue().launch(server_name=demo_args.host, server_port=demo_args.port, ssr_mode=False, show_error=True)


if __name__ == "__main__":
    run_cli(main)
