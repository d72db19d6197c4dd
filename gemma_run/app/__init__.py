"""The application: the command line, composition, the plugin pipeline and the run around a task."""
