"""API keys on every route but the probes; refusing to expose an unauthenticated server; CLI errors exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from dlforge.serve.security import ServeError, check_binding, is_loopback, load_api_keys
from .conftest import app_client

KEY = "k3y-" + "x" * 28
IMAGE = np.zeros((8, 8), dtype=np.uint8).tolist()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "api.key"
    path.write_text(f"# current and previous key\n{KEY}\n{'old-' + 'y' * 28}\n")
    path.chmod(0o600)
    return path


def test_every_route_but_probes_needs_the_key(digits_run, digits_predictor, key_file):
    with app_client(digits_run, digits_predictor, api_key_file=str(key_file)) as client:
        body = {"records": [{"image": IMAGE}]}
        for method, path in (("post", "/v1/predict"), ("get", "/v1/model"), ("get", "/metrics"),
                             ("get", "/openapi.json"), ("get", "/nonexistent")):
            response = getattr(client, method)(path, **({"json": body} if method == "post" else {}))
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post("/v1/predict", json=body, headers={"Authorization": "Bearer " + "z" * 32})
        assert wrong.status_code == 401
        basic = client.get("/v1/model", headers={"Authorization": KEY})
        assert basic.status_code == 401
        for key in (KEY, "old-" + "y" * 28):  # both keys of the file work (rotation)
            good = client.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {key}"})
            assert good.status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/").status_code == 200  # the static page, which asks for the key
        schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_key_file_problems(tmp_path):
    with pytest.raises(ServeError, match="cannot read"):
        load_api_keys(tmp_path / "missing.key")
    (tmp_path / "empty.key").write_text("# nothing\n\n")
    with pytest.raises(ServeError, match="no key"):
        load_api_keys(tmp_path / "empty.key")
    (tmp_path / "short.key").write_text("hunter2\n")
    with pytest.raises(ServeError, match="shorter than 16"):
        load_api_keys(tmp_path / "short.key")
    (tmp_path / "open.key").write_text(KEY)
    (tmp_path / "open.key").chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        assert load_api_keys(tmp_path / "open.key") == [KEY.encode()]


def test_binding_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.com")
    check_binding("127.0.0.1", has_key=False, insecure=False)
    check_binding("0.0.0.0", has_key=True, insecure=False)
    check_binding("0.0.0.0", has_key=False, insecure=True)
    with pytest.raises(ServeError, match="refusing to listen on 0.0.0.0 without an API key"):
        check_binding("0.0.0.0", has_key=False, insecure=False)


def test_cli_refuses_before_binding(digits_run, tmp_path, capsys):
    from dlforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(digits_run), "--host", "0.0.0.0", "--port", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "--api-key-file" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path / "no-such-run")])
    assert exit_info.value.code == 2 and "no such run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(digits_run), "--max-batch", "0"])
    assert exit_info.value.code == 2 and "--max-batch" in capsys.readouterr().err
