"""The Gradio layout of ``genmnist demo``: four tabs over `genmnist.demo.callbacks`.

Needs the optional extra ``genmnist[demo]`` (Gradio); only the ``genmnist demo`` command
imports this module. Every button runs through Gradio's queue, one model run at a time
(`CONCURRENCY_ID`), off the server's event loop, so the page stays responsive while a
request works; errors a user can cause show as a one-line message, never a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import gradio as gr

from genmnist.data import DATASETS
from genmnist.demo import callbacks
from genmnist.demo.callbacks import (
    BALANCED,
    DEFAULT_SAMPLER,
    MAX_COUNT,
    MAX_FRAMES,
    MAX_TRAJECTORY_COUNT,
    MIN_FRAMES,
    ModelStore,
)
from genmnist.errors import GenmnistError

#: The queue slot every model run shares: one at a time, whichever tab asked.
CONCURRENCY_ID = "model"
#: Requests that may wait in the queue; more are refused with a message.
QUEUE_SIZE = 16
#: Old result images are deleted from Gradio's cache: every hour, those older than an hour.
DELETE_CACHE = (3600, 3600)

INTRO = (
    "# genmnist demo\n"
    "Every model with shipped weights, or your own run or model folder (give its path as "
    "the checkpoint). Everything runs on this machine, offline."
)


def shown(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with the errors it raises turned into a one-line `gr.Error`, shown in
    the page without a traceback (an unexpected error's traceback is printed on the
    server's console)."""

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        try:
            return function(*args)
        except GenmnistError as exc:
            raise gr.Error(_first_line(exc), print_exception=False) from None
        except Exception as exc:  # a bug: its traceback goes to the server's console only
            message = f"unexpected {type(exc).__name__}: {_first_line(exc)}"
            raise gr.Error(message, print_exception=True) from exc

    return run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def theme() -> gr.themes.Theme:
    """Gradio's default theme with the system's fonts (the default loads web fonts)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def _picker(choices: list[str], label: str, elem_id: str, preferred: str) -> gr.Dropdown:
    value = preferred if preferred in choices else (choices[0] if choices else None)
    return gr.Dropdown(choices, value=value, label=label, elem_id=elem_id)


def _keep(choices: list[str], value: str | None, preferred: str | None = None) -> dict:
    """A picker update to new choices that keeps its value when it is still there."""
    if value not in choices:
        value = preferred if preferred in choices else (choices[0] if choices else None)
    return gr.update(choices=choices, value=value)


def build_app(store: ModelStore | None = None) -> gr.Blocks:
    """The demo's Gradio app (not started), sharing ``store``'s loaded models (default:
    `genmnist.demo.callbacks.STORE`)."""
    store = store or callbacks.STORE
    first = "mnist"
    everything = callbacks.shipped_models(first)
    latent = callbacks.shipped_models(first, callbacks.has_latent_space)
    diffusion = callbacks.shipped_models(first, callbacks.shows_trajectory)
    labels = callbacks.label_choices(first)
    samplers = callbacks.sampler_choices()
    run = {"concurrency_id": CONCURRENCY_ID, "concurrency_limit": 1}

    with gr.Blocks(
        title="genmnist demo", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as app:
        gr.Markdown(INTRO)
        dataset = gr.Radio(list(DATASETS), value=first, label="Dataset", elem_id="dataset")

        # ------------------------------------------------------------------ sample
        with gr.Tab("Sample", id="sample"), gr.Row():
            with gr.Column(scale=1):
                s_model = _picker(everything, "Model", "sample-model", "vae-conv")
                s_checkpoint = gr.Textbox(
                    label="Checkpoint folder (optional, wins over the model)",
                    placeholder="runs/x",
                    elem_id="sample-checkpoint",
                )
                s_seed = gr.Number(0, precision=0, label="Seed", elem_id="sample-seed")
                s_count = gr.Slider(
                    1, MAX_COUNT, value=16, step=1, label="Images", elem_id="sample-count"
                )
                s_label = gr.Dropdown(labels, value=BALANCED, label="Label", elem_id="sample-label")
                with gr.Group(visible=False) as s_diffusion:
                    s_sampler = gr.Dropdown(
                        samplers,
                        value=DEFAULT_SAMPLER,
                        label="Sampler",
                        elem_id="sample-sampler",
                    )
                    s_steps = gr.Textbox(
                        label=f"Steps (at most {callbacks.MAX_STEPS})",
                        placeholder="the model's",
                        elem_id="sample-steps",
                    )
                s_guidance = gr.Textbox(
                    label="Guidance scale (1 turns it off)",
                    placeholder="the model's",
                    visible=False,
                    elem_id="sample-guidance",
                )
                s_temperature = gr.Textbox(
                    label="Temperature (below 1: cleaner, less varied)",
                    placeholder="the model's",
                    visible=False,
                    elem_id="sample-temperature",
                )
                s_button = gr.Button("Generate", variant="primary", elem_id="sample-button")
            with gr.Column(scale=2):
                s_image = gr.Image(
                    label="Samples",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="sample-image",
                )
                s_status = gr.Markdown(elem_id="sample-status")
                s_about = gr.Markdown(elem_id="sample-about")

        # ------------------------------------------------------------------ latent space
        with gr.Tab("Latent space", id="latent"), gr.Row():
            with gr.Column(scale=1):
                l_model = _picker(latent, "VAE", "latent-model", "vae-conv")
                l_checkpoint = gr.Textbox(
                    label="Checkpoint folder (optional)",
                    placeholder="runs/x",
                    elem_id="latent-checkpoint",
                )
                l_ends = gr.Radio(
                    list(callbacks.ENDS),
                    value="test digits",
                    label="Between",
                    info="test digits need the test split (GENMNIST_DATA); without it, seeds",
                    elem_id="latent-ends",
                )
                with gr.Row():
                    l_first = gr.Number(0, precision=0, label="First", elem_id="latent-first")
                    l_last = gr.Number(1, precision=0, label="Last", elem_id="latent-last")
                l_frames = gr.Slider(
                    MIN_FRAMES,
                    MAX_FRAMES,
                    value=9,
                    step=1,
                    label="Frames",
                    elem_id="latent-frames",
                )
                l_label = gr.Dropdown(
                    labels,
                    value=BALANCED,
                    label="Label (conditional VAEs)",
                    info="balanced: the first digit's label (0 between seeds)",
                    elem_id="latent-label",
                )
                l_method = gr.Radio(
                    ["slerp", "linear"], value="slerp", label="Path", elem_id="latent-method"
                )
                l_button = gr.Button("Interpolate", variant="primary", elem_id="latent-button")
            with gr.Column(scale=2):
                l_position = gr.Slider(
                    0, 1, value=0.5, step=0.01, label="Position", elem_id="latent-position"
                )
                l_point = gr.Image(
                    label="At this position",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="latent-point",
                )
                l_path = gr.Image(
                    label="The path", type="pil", format="png", interactive=False,
                    elem_id="latent-path",
                )  # fmt: skip
                l_status = gr.Markdown(elem_id="latent-status")

        # ------------------------------------------------------------------ denoising
        with gr.Tab("Denoising", id="denoising"), gr.Row():
            with gr.Column(scale=1):
                d_model = _picker(diffusion, "Diffusion or flow model", "denoise-model", "ddpm")
                d_checkpoint = gr.Textbox(
                    label="Checkpoint folder (optional)",
                    placeholder="runs/x",
                    elem_id="denoise-checkpoint",
                )
                d_seed = gr.Number(0, precision=0, label="Seed", elem_id="denoise-seed")
                d_count = gr.Slider(
                    1, MAX_TRAJECTORY_COUNT, value=4, step=1, label="Images",
                    elem_id="denoise-count",
                )  # fmt: skip
                d_label = gr.Dropdown(
                    labels, value=BALANCED, label="Label (conditional models)",
                    elem_id="denoise-label",
                )  # fmt: skip
                d_sampler = gr.Dropdown(
                    samplers, value=DEFAULT_SAMPLER, label="Sampler", elem_id="denoise-sampler"
                )
                d_steps = gr.Textbox(
                    label=f"Steps (at most {callbacks.MAX_TRAJECTORY_STEPS})",
                    placeholder="the model's",
                    elem_id="denoise-steps",
                )
                d_button = gr.Button("Denoise", variant="primary", elem_id="denoise-button")
            with gr.Column(scale=2):
                d_final = gr.Image(
                    label="Samples", type="pil", format="png", interactive=False,
                    elem_id="denoise-final",
                )  # fmt: skip
                d_frames = gr.Gallery(
                    label="Every step: x_t (top), predicted clean images (bottom)",
                    columns=3,
                    format="png",
                    elem_id="denoise-frames",
                )
                d_status = gr.Markdown(elem_id="denoise-status")

        # ------------------------------------------------------------------ compare
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                c_first = _picker(everything, "First model", "compare-first", "vae-conv")
                c_second = _picker(everything, "Second model", "compare-second", "ddpm")
                c_seed = gr.Number(0, precision=0, label="Seed", elem_id="compare-seed")
                c_count = gr.Slider(
                    1, MAX_COUNT, value=16, step=1, label="Images", elem_id="compare-count"
                )
                c_label = gr.Dropdown(
                    labels, value=BALANCED, label="Label (conditional models)",
                    elem_id="compare-label",
                )  # fmt: skip
            c_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            c_status = gr.Markdown(elem_id="compare-status")
            with gr.Row():
                c_first_image = gr.Image(
                    label="First", type="pil", format="png", interactive=False,
                    elem_id="compare-first-image",
                )  # fmt: skip
                c_second_image = gr.Image(
                    label="Second", type="pil", format="png", interactive=False,
                    elem_id="compare-second-image",
                )  # fmt: skip
            c_table = gr.Markdown(elem_id="compare-table")

        # ------------------------------------------------------------------ events
        def pick(name, dataset_name, checkpoint):
            found = callbacks.controls(name, dataset_name, checkpoint, store)
            hint = {k: f"the model's: {v}" for k, v in found.defaults.items()}
            return (
                gr.update(visible=found.conditional),
                gr.update(visible=found.diffusion),
                gr.update(placeholder=hint.get("steps", "the model's")),
                gr.update(visible=found.guidance, placeholder=hint.get("guidance")),
                gr.update(visible=found.temperature, placeholder=hint.get("temperature")),
                found.about,
            )

        pick_in = [s_model, dataset, s_checkpoint]
        pick_out = [s_label, s_diffusion, s_steps, s_guidance, s_temperature, s_about]

        def change_dataset(name, sampled, interpolated, denoised, compared, against):
            every = callbacks.shipped_models(name)
            vaes = callbacks.shipped_models(name, callbacks.has_latent_space)
            diffusions = callbacks.shipped_models(name, callbacks.shows_trajectory)
            new_labels = callbacks.label_choices(name)
            return (
                _keep(every, sampled),
                _keep(vaes, interpolated),
                _keep(diffusions, denoised),
                _keep(every, compared),
                _keep(every, against, "ddpm"),
                *(gr.update(choices=new_labels) for _ in range(4)),
            )

        dataset.change(
            shown(change_dataset),
            [dataset, s_model, l_model, d_model, c_first, c_second],
            [s_model, l_model, d_model, c_first, c_second, s_label, l_label, d_label, c_label],
        ).then(shown(pick), pick_in, pick_out)
        s_model.input(shown(pick), pick_in, pick_out)
        s_checkpoint.submit(shown(pick), pick_in, pick_out)
        app.load(shown(pick), pick_in, pick_out)

        def do_sample(*values):
            result = callbacks.sample(*values, store=store)
            return result.image, result.message

        s_button.click(
            shown(do_sample),
            [s_model, dataset, s_checkpoint, s_seed, s_count, s_label, s_sampler, s_steps,
             s_guidance, s_temperature],
            [s_image, s_status],
            **run,
        )  # fmt: skip

        def do_interpolate(*values):
            result = callbacks.interpolation(*values, store=store)
            return result.point, result.path, result.message

        interpolate_in = [
            l_model, dataset, l_checkpoint, l_ends, l_first, l_last, l_frames, l_position,
            l_label, l_method,
        ]  # fmt: skip
        interpolate_out = [l_point, l_path, l_status]
        l_button.click(shown(do_interpolate), interpolate_in, interpolate_out, **run)
        l_position.release(shown(do_interpolate), interpolate_in, interpolate_out, **run)

        def do_denoise(*values):
            result = callbacks.trajectory(*values, store=store)
            return result.final, result.frames, result.message

        d_button.click(
            shown(do_denoise),
            [d_model, dataset, d_checkpoint, d_seed, d_count, d_label, d_sampler, d_steps],
            [d_final, d_frames, d_status],
            **run,
        )

        def do_compare(*values):
            result = callbacks.compare(*values, store=store)
            return (*result.images, result.table, result.message)

        c_button.click(
            shown(do_compare),
            [c_first, c_second, dataset, c_seed, c_count, c_label],
            [c_first_image, c_second_image, c_table, c_status],
            **run,
        )
    return app


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the demo on ``host:port`` until Ctrl-C.

    Raises:
        GenmnistError: the address cannot be served (the port is taken...).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app()
    app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            quiet=True,
            prevent_thread_lock=True,
            show_error=False,
            theme=theme(),
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            footer_links=["gradio", "settings"],
        )
    except OSError as exc:
        raise GenmnistError(
            f"cannot serve the demo on {host}:{port}: {_first_line(exc)} (pick another --port)"
        ) from None
    print(f"genmnist demo: http://{host}:{port} (Ctrl-C stops it)", flush=True)
    app.block_thread()
