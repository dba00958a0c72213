"""python -m generate.app: a local Gradio page to pick a model, generate, listen and download, over generate.api."""

from __future__ import annotations

import html
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generate.api import Model, list_models
from generate.cli import main
from generate.config import AppConfig, to_object
from generate.errors import UserError
from generate.music import audio

MAX_SAMPLES = 8  # the page has this many sample slots; num_samples is 1..MAX_SAMPLES
INSTALL_HINT = 'the app needs Gradio: pip install -e ".[app]" (or pip install "gru-generate[app]")'
CARD_FIELDS = (("dataset", "dataset"), ("tokenizer", "tokenizer"), ("parameters", "parameters"),
               ("val_loss", "validation loss (nats/token)"), ("steps", "training steps"))


@dataclass
class Session:
    """What every request shares: the settings, the listed models, and the models loaded so far."""

    settings: AppConfig
    out_dir: Path
    listed: list[dict[str, Any]]
    models: dict[str, Model] = field(default_factory=dict)

    def entry(self, path: str) -> dict[str, Any]:
        """A listed, readable model by its path; anything else is refused."""
        for entry in self.listed:
            if entry["path"] == path and "card" in entry:
                return entry
        raise UserError(f"model {path!r} is not one of the listed models; reload the page")

    def model(self, path: str) -> Model:
        """A listed model, loaded once (Gradio's queue runs one generation at a time, so no lock is needed)."""
        self.entry(path)
        if path not in self.models:
            self.models[path] = Model.from_pretrained(path, device=self.settings.device.value)
        return self.models[path]


def new_session(settings: AppConfig) -> Session:
    """The listed models (shipped and checkpoints_dir/*/best.pt) and the folder samples are written to."""
    out_dir = Path(settings.out_dir) if settings.out_dir else Path(tempfile.mkdtemp(prefix="generate-app-"))
    listed = list_models(settings.checkpoints_dir)
    if not any("card" in entry for entry in listed):
        raise UserError(f"no models: no shipped ones and none under {settings.checkpoints_dir}/*/best.pt")
    return Session(settings, out_dir, listed)


def label(entry: dict[str, Any]) -> str:
    return f"{entry['name']} ({entry['origin']})"


def _value(key: str, value: Any) -> str:
    if value is None:
        return "?"
    if key == "parameters":
        return f"{value:,}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def card_markdown(entry: dict[str, Any]) -> str:
    """One model's card: dataset, tokenizer, parameters, validation loss, training steps."""
    card = entry["card"]
    rows = " · ".join(f"**{name}** {_value(key, card.get(key))}" for key, name in CARD_FIELDS)
    return f"{label(entry)}: {rows}"


def models_table(listed: list[dict[str, Any]]) -> str:
    """Every listed model as a row of a Markdown table; a run that cannot be read shows its error."""
    lines = ["| model | " + " | ".join(name for _, name in CARD_FIELDS) + " |", "|---" * (len(CARD_FIELDS) + 1) + "|"]
    for entry in listed:
        if "card" in entry:
            values = (_value(key, entry["card"].get(key)) for key, _ in CARD_FIELDS)
            lines.append(f"| {label(entry)} | " + " | ".join(values) + " |")
        else:
            lines.append(f"| {label(entry)} | error: {entry['error']} |" + " |" * (len(CARD_FIELDS) - 1))
    return "\n".join(lines)


def whole(name: str, value: Any) -> int:
    """A form number as an int; an empty box or a fraction names the field (ranges are the library's to check)."""
    if value is None or value == "":
        raise UserError(f"{name} is empty; give a whole number")
    if float(value) != int(float(value)):
        raise UserError(f"{name}={value} is not a whole number")
    return int(float(value))


def sampling(temperature: float, top_k: Any, top_p: float, length: Any, seed: Any) -> dict[str, Any]:
    """The sampling settings of a request, typed as the CLI types them."""
    return {"temperature": float(temperature), "top_k": whole("top_k", top_k), "top_p": float(top_p),
            "length": whole("length", length), "seed": whole("seed", seed)}


def count(num_samples: Any) -> int:
    n = whole("num_samples", num_samples)
    if not 1 <= n <= MAX_SAMPLES:
        raise UserError(f"num_samples={n} must be 1..{MAX_SAMPLES} in the app")
    return n


def text_samples(session: Session, path: str, prompt: str, settings: dict[str, Any], n: int) -> Iterator[list[str]]:
    """The texts so far, after each streamed piece: sample i is Model.stream with seed + i (the CLI's seed=seed+i)."""
    model = session.model(path)
    texts: list[str] = []
    for i in range(n):
        texts.append("")
        for piece in model.stream(prompt, **{**settings, "seed": settings["seed"] + i}):
            texts[i] += piece
            yield texts


def as_named(err: UserError, upload: str | None, name: str) -> UserError:
    """The error with the server's copy of an upload named as the user named the file."""
    return UserError(str(err).replace(upload, name)) if upload else err


def music_samples(session: Session, path: str, primer: str | None, instrument: str, settings: dict[str, Any],
                  n: int, meter: str = "", key: str = "") -> list[dict[str, Any]]:
    """Generate pieces and write each as .mid, .musicxml, .wav and .png with MusicSample.write (as the CLI does).

    `meter` ("6/8") and `key` ("Dm"), when given, start each piece from those control tokens.

    Nothing is written until every piece is generated, and a failed write removes its folder: no empty folders.
    """
    audio.program_for(instrument)  # a bad instrument is refused before any generation
    model = session.model(path)
    try:
        pieces = model.sample(primer=primer, num_samples=n, meter=meter.strip() or None, key=key.strip() or None,
                              **settings)
    except UserError as err:
        raise as_named(err, primer, Path(primer).name if primer else "") from None
    session.out_dir.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="run-", dir=session.out_dir))
    try:
        samples = []
        for i, piece in enumerate(pieces):
            stem = run / f"sample_{i}"
            piece.write(stem, instrument=instrument, soundfont=session.settings.soundfont)
            samples.append({"title": f"sample {i}: {len(piece.piece.notes)} notes, "
                                     f"{piece.piece.in_seconds(piece.qpm).duration:.1f} s",
                            **{kind: str(stem.with_suffix(f".{kind}")) for kind in ("mid", "musicxml", "wav", "png")}})
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise
    return samples


def build(session: Session) -> Any:  # long: one page, laid out top to bottom as the user reads it
    """The Gradio page: model list with cards, settings, the generate button and the sample slots."""
    import gradio as gr

    usable = [entry for entry in session.listed if "card" in entry]
    first = next((e for e in usable if e["name"] == "shakespeare"), usable[0])
    instruments = ["piano", *[name for name in audio.INSTRUMENTS if name != "piano"]]
    with gr.Blocks(title="gru-generate", analytics_enabled=False) as page:
        gr.Markdown("# gru-generate\nPick a model, generate, listen and download. "
                    "Everything runs on this machine with the `generate` library.")
        model = gr.Radio([(label(e), e["path"]) for e in usable], value=first["path"], label="model", elem_id="model")
        card = gr.Markdown(card_markdown(first), elem_id="card")
        with gr.Accordion("all models", open=False):
            gr.Markdown(models_table(session.listed), elem_id="models")
        with gr.Column(visible=not first["music"]) as text_inputs:
            prompt = gr.Textbox(label="prompt", placeholder="ROMEO:", elem_id="prompt")
        with gr.Column(visible=first["music"]) as music_inputs:
            with gr.Row():
                primer = gr.File(label="primer (.mid, optional): a melody to continue", file_types=[".mid", ".midi"],
                                 type="filepath", elem_id="primer")
                instrument = gr.Dropdown(instruments, value="piano", label="instrument", elem_id="instrument",
                                         info="General MIDI: a name or a program 0..127", allow_custom_value=True)
            with gr.Row():  # models trained with control tokens (dataset.controls=true, e.g. folk); empty: the model picks
                meter = gr.Textbox(label="meter (optional)", placeholder="6/8", elem_id="meter")
                key = gr.Textbox(label="key (optional)", placeholder="D or Dm", elem_id="key")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature (0: greedy)", elem_id="temperature")
            top_k = gr.Number(0, label="top-k (0: off)", precision=0, elem_id="top_k")
            top_p = gr.Slider(0, 1, value=1.0, step=0.01, label="top-p (1: off)", elem_id="top_p")
        with gr.Row():
            length = gr.Number(200, label="length (tokens)", precision=0, elem_id="length")
            seed = gr.Number(1337, label="seed (sample i uses seed + i)", precision=0, elem_id="seed")
            num_samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="samples", elem_id="num_samples")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        error = gr.HTML(visible=False, elem_id="error")  # HTML, escaped: the line shows exactly as the CLI prints it
        gr.Markdown(f"audio: {audio.describe(session.settings.soundfont)}", elem_id="audio-note")
        texts = [gr.Textbox(label=f"sample {i}", lines=8, max_lines=40, visible=False, elem_id=f"text-{i}")
                 for i in range(MAX_SAMPLES)]
        slots, players, rolls, downloads = [], [], [], []
        for i in range(MAX_SAMPLES):
            with gr.Group(visible=False, elem_id=f"music-{i}") as slot, gr.Row():
                with gr.Column(scale=1):
                    players.append(gr.Audio(type="filepath", label=f"sample {i}", elem_id=f"audio-{i}",
                                            interactive=False, buttons=["download"],
                                            waveform_options=gr.WaveformOptions(show_recording_waveform=False)))
                    downloads.append(gr.File(label="download", file_count="multiple", elem_id=f"files-{i}",
                                             interactive=False))
                rolls.append(gr.Image(type="filepath", label="piano roll", elem_id=f"roll-{i}", interactive=False,
                                      buttons=["download", "fullscreen"], height=320, scale=2))
            slots.append(slot)

        def choose(path: str) -> dict[Any, Any]:
            entry = session.entry(path)
            hidden = {c: gr.update(visible=False) for c in [error, *texts, *slots]}
            return {**hidden, card: card_markdown(entry), text_inputs: gr.update(visible=not entry["music"]),
                    music_inputs: gr.update(visible=entry["music"])}

        def run(path: str, prompt_: str, primer_: str | None, instrument_: str, meter_: str, key_: str,
                temperature_: float, top_k_: Any, top_p_: float, length_: Any, seed_: Any,
                num_samples_: Any) -> Iterator[dict[Any, Any]]:
            try:
                settings, n = sampling(temperature_, top_k_, top_p_, length_, seed_), count(num_samples_)
                if session.entry(path)["music"]:
                    samples = music_samples(session, path, primer_, instrument_ or "", settings, n, meter_ or "",
                                            key_ or "")
                    yield {error: gr.update(visible=False), **music_updates(gr, samples, slots, players, rolls,
                                                                             downloads)}
                    return
                shown = {c: gr.update(visible=False) for c in [error, *texts]}
                for done in text_samples(session, path, prompt_ or "", settings, n):
                    yield {**shown, **{texts[i]: gr.update(value=t, visible=True) for i, t in enumerate(done)}}
            except UserError as err:  # the CLI's one line, in the page; the app keeps serving
                yield {error: gr.update(value=error_html(err), visible=True),
                       **{c: gr.update(visible=False) for c in [*texts, *slots]}}

        model.change(choose, model, [card, text_inputs, music_inputs, error, *texts, *slots])
        button.click(run, [model, prompt, primer, instrument, meter, key, temperature, top_k, top_p, length, seed,
                           num_samples],
                     [error, *texts, *slots, *players, *rolls, *downloads])
    return page


def music_updates(gr: Any, samples: list[dict[str, Any]], slots: list[Any], players: list[Any], rolls: list[Any],
                  downloads: list[Any]) -> dict[Any, Any]:
    """Each written sample into its slot (player, piano roll, the three downloads); the other slots hidden."""
    updates: dict[Any, Any] = {}
    for i, slot in enumerate(slots):
        if i >= len(samples):
            updates[slot] = gr.update(visible=False)
            continue
        sample = samples[i]
        updates.update({slot: gr.update(visible=True),
                        players[i]: gr.update(value=sample["wav"], label=sample["title"]), rolls[i]: sample["png"],
                        downloads[i]: [sample["mid"], sample["musicxml"], sample["wav"]]})
    return updates


def error_html(err: UserError) -> str:
    """The CLI's `error: ...` line as the page shows it."""
    return f'<p style="color: #b91c1c; font-weight: 600">error: {html.escape(str(err))}</p>'


def free_port(host: str) -> int:
    """A port nothing listens on now (port=0): Gradio wants a number, not 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def run_app(cfg: Any) -> None:
    """python -m generate.app: serve until Ctrl-C, printing the URL to open."""
    settings = to_object(cfg, AppConfig)
    sound = audio.describe(settings.soundfont)  # a wrong soundfont= path fails before anything starts
    # No calls home: Gradio's usage analytics and version check are off (they also honour this variable).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    session = new_session(settings)
    port = settings.port or free_port(settings.host)
    page = build(session).queue(default_concurrency_limit=1)  # one generation at a time: each uses every core
    try:
        page.launch(server_name=settings.host, server_port=port, prevent_thread_lock=True, quiet=True,
                    allowed_paths=[str(session.out_dir)], share=False, footer_links=["gradio", "settings"])
    except OSError as err:
        raise UserError(f"cannot listen on {settings.host}:{port} ({err}); choose another with port=N "
                        "(port=0: any free one)") from None
    print(f"generate app: open http://{settings.host}:{port}/ (files go to {session.out_dir}; Ctrl-C stops)",
          flush=True)
    print(f"audio: {sound}", flush=True)
    page.block_thread()


if __name__ == "__main__":
    main("app", run_app)
