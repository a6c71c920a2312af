"""The local web demo started by ``genmnist demo``.

`genmnist.demo.callbacks` does the work behind every button as plain functions of plain
values (models, seeds, counts in; Pillow images and text out) and imports no Gradio, so it
is tested like any other module. `genmnist.demo.app` lays those functions out as a Gradio
app; it needs the optional extra ``genmnist[demo]`` and is imported only by the
``genmnist demo`` command.
"""
