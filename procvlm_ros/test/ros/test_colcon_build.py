"""The repository builds with colcon and the installed node runs from its install space."""

import ast
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

from procvlm_msgs.msg import Progress
import pytest

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    colcon = shutil.which('colcon', path=str(VENV_BIN))
    if colcon is None:
        if os.environ.get('PROCVLM_REQUIRE_ROS') == '1':
            pytest.fail('colcon missing from the venv')
        pytest.skip('colcon not installed')
    ws = tmp_path_factory.mktemp('ws')
    (ws / 'src').mkdir()
    for pkg in ('procvlm_msgs', 'procvlm_ros'):
        shutil.copytree(REPO / pkg, ws / 'src' / pkg,
                        ignore=shutil.ignore_patterns('__pycache__', '*.egg-info', 'test'))
    env = dict(os.environ, PATH=f'{VENV_BIN}:{os.environ["PATH"]}',
               AMENT_PREFIX_PATH=str(VENV_BIN.parent))
    res = subprocess.run([colcon, 'build', '--event-handlers', 'console_direct-'], cwd=ws,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return ws


def test_install_space_layout(workspace):
    share = workspace / 'install/procvlm_ros/share/procvlm_ros'
    assert (share / 'launch/monitor.launch.py').exists()
    assert (share / 'config/monitor.yaml').exists()
    for exe in ('monitor_node', 'procvlm-infer', 'video_camera'):
        assert os.access(workspace / 'install/procvlm_ros/lib/procvlm_ros' / exe, os.X_OK), exe
    assert list((workspace / 'install/procvlm_msgs').rglob('_progress.py'))


def test_installed_node_runs_with_installed_params(workspace, ros_env, probe):
    share = workspace / 'install/procvlm_ros/share/procvlm_ros'
    exe = workspace / 'install/procvlm_ros/lib/procvlm_ros/monitor_node'
    script = (f'. install/setup.sh && python -c "import procvlm_ros; print(procvlm_ros.__file__)"'
              f' && exec {exe} --ros-args --params-file {share}/config/monitor.yaml '
              "-p backend:=scripted -p 'scripted_outputs:=[\"<progress>5%</progress>\"]' "
              '-p task:=installed -p status_period_s:=0.2')
    env = dict(ros_env, PATH=f'{VENV_BIN}:{ros_env["PATH"]}')
    proc = subprocess.Popen(['bash', '-c', script], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    got = []
    probe.node.create_subscription(Progress, 'progress', got.append, 10)
    waiting = Progress.STATUS_WAITING_FOR_FRAMES
    try:
        assert probe.spin_until(lambda: any(m.status == waiting for m in got), 20.0)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
    assert str(workspace / 'install') in out.splitlines()[0]  # the installed copy ran
    assert got[0].task == 'installed' and got[0].backend == 'scripted'
    # LOADING until the backend is up (a status may go out before that), then waiting.
    first = [m.status for m in got].index(waiting)
    assert all(m.status == Progress.STATUS_LOADING for m in got[:first])


def test_launch_file_declares_documented_arguments():
    # launch/launch_ros are not on PyPI: check the file's structure; it runs on a ROS install.
    tree = ast.parse((REPO / 'procvlm_ros/launch/monitor.launch.py').read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') ==
                'DeclareLaunchArgument'}
    assert declared == {'params_file', 'model', 'task', 'profile', 'image_topic', 'namespace'}
    assert "executable='monitor_node'" in (REPO / 'procvlm_ros/launch/monitor.launch.py'
                                            ).read_text()
