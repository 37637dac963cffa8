"""The commands: ``mpistage``, ``mpistage calibrate`` and ``mpistage-sbcast``, each parsing its arguments and calling the library."""
