"""The pipeline: schedules of point-to-point messages, buffers, waiting, frames and codecs, the writer thread, liveness and recovery."""
