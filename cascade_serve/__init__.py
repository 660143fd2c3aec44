"""The ``cascade`` command: parse, dispatch, print, progress and the demo, over the packages that do
the work (``serve``, ``calibration``, ``evaluation``, ``toymodels``)."""
