"""Click-log ExampleGen: a TFX file-based ExampleGen driven by a dataset spec, with quarantine.

``component.ClickLogExampleGen`` is the TFX component; ``executor.Executor`` its executor;
``line_parser`` the pure line parser (no Beam); ``parsing`` the file parser and the Beam PTransform. Importing this package imports neither TFX
nor TensorFlow; import the submodules you need.
"""
