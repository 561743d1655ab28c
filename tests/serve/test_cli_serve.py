import medscope.serve
from medscope.cli import main


def test_bad_run_is_one_line_before_any_server(tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(medscope.serve, "serve", lambda *a, **k: started.append(a))
    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "run directory not found" in err
    assert started == []


def test_serve_loads_runs_then_starts_on_loopback(trained_run, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(medscope.serve, "serve",
                        lambda app, host, port: started.append((app, host, port)))
    monkeypatch.delenv("MEDSCOPE_TOKEN", raising=False)
    assert main(["serve", str(trained_run.root), "--port", "8123", "--token", "t0k"]) == 0
    (app, host, port), = started
    assert (host, port) == ("127.0.0.1", 8123) and app.state.token_required
    assert f"serving {trained_run.root.name} at http://127.0.0.1:8123/" in capsys.readouterr().out


def test_bad_options_are_user_errors(trained_run, capsys):
    assert main(["serve", str(trained_run.root), "--port", "70000"]) == 2
    assert main(["serve", str(trained_run.root), "--abstain-below", "2"]) == 2
    assert main(["serve", str(trained_run.root), "--max-upload-mb", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert [e.split()[2] for e in errors] == ["--port", "--abstain-below", "--max-upload-mb"]
