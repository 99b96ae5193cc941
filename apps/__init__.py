"""The tools around the pipelines: the ``fastdrag`` command line (``cli``), the browser editor
(``app``, drawing with ``frontend``), the DragBench runner (``dragbench``) and its metrics
(``metrics``), ShapeDrag (``shapes``), and models and data built in code for the tests and
benchmarks (``testing``).

The pipelines' own files stand one level up (``pipeline_fastdrag.py``, ``pipeline_fastdrag_sdxl.py``,
``fastdrag_core.py`` and the modules they import); nothing there imports anything from here.
"""
