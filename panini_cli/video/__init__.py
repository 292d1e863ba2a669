"""`panini video`: streaming restoration of the faces in a video.

job.py runs a job (decode, track, restore, encode by chunk, join, mux audio); settings.py
holds what it is set to do and what every process builds from that; chunks.py the chunk
files, the encoding writer and the join; workers.py the chunk workers of `--gpus` /
`--cpu-workers`; ffmpeg_io.py probing, decoding and encoder options; tracking.py faces
across frames; vdr_smoothing.py `--smooth-vdr`. Callers use this package's names.
"""
from .ffmpeg_io import Encoding, VideoError, VideoInfo, ffmpeg_exe, parse_time, probe  # noqa: F401
from .job import restore_video  # noqa: F401
from .settings import Settings, make_tracker  # noqa: F401
