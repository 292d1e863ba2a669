"""`panini video` end to end on short clips: timing, audio, pass-through pixels, damage.

Clips: synthetic ones made here with imageio_ffmpeg.write_frames (no face, so they
run fast), and two of ../shared/data/video trimmed with --start/--duration (faces).
Resume and worker processes: test_video_resume.py; --smooth-vdr: test_video_vdr.py.
"""
import numpy as np
import pytest

from panini_cli import video as vid
from panini_cli.app import app
from videoclips import ffmpeg, need_clip, run, runner, sine_wav, span, summary_of, synthetic, yuv_frames


# ---------------------------------------------------------------- timing, audio, pixels
def test_plain_command_no_face_keeps_frames_timing_audio_and_pixels(model_file, tmp_path, monkeypatch):
    from panini_models import registry
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "default.safetensors").write_bytes(model_file.read_bytes())
    monkeypatch.setattr(registry, "PACKAGE_WEIGHTS", bundled)       # as if the default model shipped
    clip = synthetic(tmp_path / "clip.mp4", audio=sine_wav(tmp_path / "a.wav", 2.0))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["video", "clip.mp4"])                 # exactly the user's example
    assert res.exit_code == 0, res.output
    out = tmp_path / "clip_restored.mp4"
    assert out.exists() and not (tmp_path / "clip_restored.mp4.partial").exists()
    src, got = vid.probe(clip), vid.probe(out)
    assert got.frames == src.frames == 50 and got.fps == src.fps == 25
    assert got.audio == ["aac"]
    v_in, v_out = span(clip, "0:v:0"), span(out, "0:v:0")
    assert v_out[:2] == pytest.approx(v_in[:2], abs=1e-3)
    a_in, a_out = span(clip, "0:a:0"), span(out, "0:a:0")
    assert a_out[1] - a_out[0] == pytest.approx(a_in[1] - a_in[0], abs=0.03)
    # no face: the frames come back within codec loss, with no colour shift
    a, b = yuv_frames(clip), yuv_frames(out)
    assert a.shape == b.shape == (50, 160 * 120 * 3 // 2)
    d = b - a
    assert 10 * np.log10(255 ** 2 / (d ** 2).mean()) > 40 and abs(d.mean()) < 0.3
    # and refuse to overwrite it on a rerun
    res = runner.invoke(app, ["video", "clip.mp4"])
    assert res.exit_code == 1 and "exists" in res.output


def test_real_clip_with_audio_offset_and_faces(model_file, tmp_path):
    clip = need_clip("facerec_short_hamilton_clip.mp4")        # video starts 0.84 s after the audio
    out = tmp_path / "ham.mp4"
    s = summary_of(run(clip, "-o", out, "-m", model_file, "--duration", "1.2", "--json"))
    src, got = vid.probe(clip), vid.probe(out)
    assert got.frames == s["frames"] == src.frames_between(0, 1.2) > 8
    assert got.fps == src.fps and s["faces"] > 0
    assert got.color.get("space") == "bt709"                        # colour tags kept
    v_in, v_out, a_out = span(clip, "0:v:0"), span(out, "0:v:0"), span(out, "0:a:0")
    assert v_out[0] - a_out[0] == pytest.approx(v_in[0], abs=0.01)  # lip sync: the same video offset
    assert a_out[1] - a_out[0] == pytest.approx(1.2, abs=0.05)


def test_clip_without_audio_from_start_with_sar(model_file, tmp_path):
    clip = need_clip("keep_real_3.mp4")                         # no audio, SAR 391:390, a face throughout
    out = tmp_path / "k3.mkv"
    s = summary_of(run(clip, "-o", out, "-m", model_file, "--start", "5.3", "--json", "--smooth", "1"))
    got, src = vid.probe(out), vid.probe(clip)
    assert got.frames == s["frames"] == src.frames_between(5.3, None) > 8
    assert s["faces"] >= s["frames"] - 1 and got.audio == [] and got.sar == src.sar


def test_rotation_metadata_is_applied_to_the_pixels(model_file, tmp_path):
    clip = synthetic(tmp_path / "s.mp4", n=10)
    rotated = tmp_path / "rot.mp4"
    ffmpeg("-display_rotation", "90", "-i", clip, "-c", "copy", rotated)
    assert vid.probe(rotated).rotation == 90
    out = tmp_path / "out.mp4"
    summary_of(run(rotated, "-o", out, "-m", model_file, "--json"))
    got = vid.probe(out)
    assert (got.width, got.height, got.rotation, got.frames) == (120, 160, 0.0, 10)


def test_audio_reencoded_when_the_container_refuses_it(model_file, tmp_path):
    clip = synthetic(tmp_path / "m.mkv", n=25, audio=sine_wav(tmp_path / "a.wav", 1.0), audio_codec="pcm_mulaw")
    out = tmp_path / "m.mp4"
    res = run(clip, "-o", out, "-m", model_file)
    assert res.exit_code == 0, res.output
    assert "audio re-encoded to aac" in res.output
    assert vid.probe(out).audio == ["aac"]
    a = span(out, "0:a:0")
    assert a[1] - a[0] == pytest.approx(1.0, abs=0.05)


def test_variable_frame_rate_is_said_and_stays_in_sync(model_file, tmp_path):
    clip = synthetic(tmp_path / "c.mp4", n=50, audio=sine_wav(tmp_path / "a.wav", 3.0))
    vfr = tmp_path / "vfr.mkv"                  # frames 25..49 shown twice as long: 1 s at 25 fps, 2 s at 12.5
    ffmpeg("-i", clip, "-vf", "setpts='if(lt(N,25),N/25,1+(N-25)/12.5)/TB'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-crf", "10", "-c:a", "copy", vfr)
    assert vid.probe(vfr).vfr
    out = tmp_path / "out.mkv"
    res = run(vfr, "-o", out, "-m", model_file)
    assert res.exit_code == 0, res.output
    assert "variable frame rate" in res.output
    got = vid.probe(out)
    v = span(out, "0:v:0")
    assert not got.vfr and v[1] - v[0] == pytest.approx(3.0, abs=0.1)


# ---------------------------------------------------------------- damage
def test_unreadable_and_truncated_inputs(model_file, tmp_path):
    clip = synthetic(tmp_path / "c.mp4", n=50)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"                  # moov at the end: nothing can be read
    cut.write_bytes(data[:len(data) // 2])
    res = run(cut, "-m", model_file)
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1 and "cut.mp4" in res.output and "moov" in res.output
    assert not (tmp_path / "cut_restored.mp4").exists() and not list(tmp_path.glob("*.partial"))

    fast = tmp_path / "fast.mp4"
    ffmpeg("-i", clip, "-c", "copy", "-movflags", "+faststart", fast)
    data = fast.read_bytes()
    part = tmp_path / "part.mp4"                # index first, data cut: the start decodes
    part.write_bytes(data[:int(len(data) * 0.6)])
    res = run(part, "-m", model_file)
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "part.mp4" in errors[0] and "truncated" in errors[0]
    kept = vid.probe(tmp_path / "part_restored.mp4")
    assert 10 < kept.frames < 50
