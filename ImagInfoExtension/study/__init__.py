"""Studies: a table of series with their factors, the measurement plugins, and the runner.

- :mod:`~ImagInfoExtension.study.table`: the study table (manifest reading, factors, validation);
- :mod:`~ImagInfoExtension.study.dicom`: grouping DICOM series into a study (a folder or Slicer's database);
- :mod:`~ImagInfoExtension.study.plugins`: what a measurement plugin is, and the registry of them;
- :mod:`~ImagInfoExtension.study.measurements`: the built-in plugins (vessels, image quality);
- :mod:`~ImagInfoExtension.study.runner`: every plugin over every series on the batch engine.

Analyses of one kind of study build on the runner's long table (dose: :mod:`ImagInfoExtension.dose`).
"""
