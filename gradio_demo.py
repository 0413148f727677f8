"""A web chat page for a trained model: multi-turn, streamed answers, a system prompt box, sampling sliders and a
clear button. Documents (--knowledge_dir, or files uploaded on the page) ground the answers, and the passages
used are shown beside the chat. Same model flags as openai_api.py; listens on 127.0.0.1 unless --host says otherwise.

    python gradio_demo.py --base_model merged-sft                       # then open http://127.0.0.1:7860
    python gradio_demo.py --base_model merged-pt --lora_model outputs-sft --host 0.0.0.0 --port 7860
    python gradio_demo.py --base_model merged-sft --knowledge_dir guidelines/

Uploaded files are indexed in memory for this server (every visitor's answers use them) and are not copied into
--knowledge_dir.
"""

import html
import os
from dataclasses import dataclass, field

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a hospital network may not reach the internet

from medgpt import args  # noqa: E402
from medgpt.engine import ChatEngine, EngineArguments  # noqa: E402
from medgpt.errors import run_cli  # noqa: E402
from medgpt.prompts import with_system  # noqa: E402
from medgpt.retrieval.documents import READERS  # noqa: E402
from medgpt.retrieval.knowledge import KnowledgeBase, RetrievalArguments  # noqa: E402


@dataclass
class DemoArguments:
    system_prompt: str = field(default="", metadata={"help": "Initial text of the system prompt box."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0 = every interface)."})
    port: int = field(default=7860, metadata={"help": "TCP port."})
    max_new_tokens: int = field(default=512, metadata={"help": "Initial answer length limit."})


def sources_markdown(engine: ChatEngine, sources: list[dict]) -> str:
    """The passages beside the answer: number, file and page, text; those the answer cites in bold."""
    if engine.knowledge is None:
        return "No documents: upload some, or start with --knowledge_dir."
    if not sources:
        return "**No passage of the documents matches this question.**"
    lines = []
    for s in sources:
        mark = "**cited**" if s.get("cited") else "not cited"
        lines.append(f"[{s['number']}] **{html.escape(s['source'])}** ({mark})\n\n> {html.escape(s['text'])}")
    return "\n\n".join(lines)


def add_documents(engine: ChatEngine, paths: list[str] | None) -> str:
    """Index uploaded files (in memory); the report of what was read and what was skipped."""
    from pathlib import Path

    if not paths:
        return ""
    if engine.knowledge is None:
        engine.knowledge = KnowledgeBase([])
    report = engine.knowledge.add_roots([Path(p) for p in paths])
    return html.escape(str(report)).replace("\n", "  \n")


def build_demo(engine: ChatEngine, title: str, system_prompt: str = "", max_new_tokens: int = 512):
    import gradio as gr

    def respond(message: str, history: list, turns: list, system: str, temperature: float, top_p: float, length: int):
        """Stream an answer into the chat. `turns` keeps the raw conversation; the chat shows it with < and >
        escaped, so that text such as <think> or <tool_call> is displayed instead of being taken for HTML."""
        if not message.strip():
            yield "", history, turns, gr.update()
            return
        conversation = with_system([*turns, {"role": "user", "content": message}], system)
        history = [*history, {"role": "user", "content": html.escape(message, quote=False)}]
        history.append({"role": "assistant", "content": ""})
        answer = ""
        stream = engine.stream(conversation, temperature=temperature, top_p=top_p, max_new_tokens=int(length))
        found = sources_markdown(engine, [p.as_dict() for p in stream.passages])
        for piece in stream:
            answer += piece
            history[-1]["content"] = html.escape(answer, quote=False)
            yield "", history, turns, found
        turns = [*turns, {"role": "user", "content": message}, {"role": "assistant", "content": answer}]
        yield "", history, turns, sources_markdown(engine, stream.reply.sources)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}")
        system = gr.Textbox(label="System prompt", value=system_prompt, lines=2)
        with gr.Row():
            chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chatbot", scale=3)
            with gr.Column(scale=2):
                gr.Markdown("### Sources")
                sources = gr.Markdown(sources_markdown(engine, []), elem_id="sources")
        turns = gr.State([])
        message = gr.Textbox(label="Message", placeholder="Ask a medical question and press Enter", elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear", elem_id="clear")
        with gr.Accordion("Sampling", open=False):
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            length = gr.Slider(
                min(16, max_new_tokens),
                max(2048, max_new_tokens),
                value=max_new_tokens,
                step=16,
                label="Max new tokens",
            )
        with gr.Accordion("Documents", open=engine.knowledge is None):
            upload = gr.File(label="Add documents", file_count="multiple", file_types=list(READERS), elem_id="upload")
            indexed = gr.Markdown(elem_id="indexed")
        upload.upload(lambda paths: add_documents(engine, paths), upload, indexed)
        inputs = [message, chatbot, turns, system, temperature, top_p, length]
        message.submit(respond, inputs, [message, chatbot, turns, sources])
        send.click(respond, inputs, [message, chatbot, turns, sources])
        clear.click(lambda: ([], [], "", sources_markdown(engine, [])), None, [chatbot, turns, message, sources])
    return demo


def main(argv: list[str] | None = None) -> None:
    engine_args, demo_args, retrieval_args = args.parse((EngineArguments, DemoArguments, RetrievalArguments), argv)
    engine = ChatEngine.from_args(engine_args, KnowledgeBase.from_args(retrieval_args))
    title = f"Medical chat: {engine_args.name}"
    demo = build_demo(engine, title, demo_args.system_prompt, demo_args.max_new_tokens)
    demo.queue().launch(server_name=demo_args.host, server_port=demo_args.port, ssr_mode=False, show_error=True)


if __name__ == "__main__":
    run_cli(main)
