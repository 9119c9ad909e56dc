"""Click-log ExampleGen: a TFX file-based ExampleGen driven by a dataset spec, with quarantine.

``component.ClickLogExampleGen`` is the TFX component; ``executor.Executor`` its executor;
``parsing`` the Beam PTransform and the pure line parser. Importing this package imports neither TFX
nor TensorFlow; import the submodules you need.
"""
