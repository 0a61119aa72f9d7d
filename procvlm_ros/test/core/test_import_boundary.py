import subprocess
import sys

# Block heavy and ROS modules, then import the whole core: it must not need any of them.
CODE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import procvlm_ros.core.config, procvlm_ros.core.estimator, procvlm_ros.core.frame_window
import procvlm_ros.core.parsing, procvlm_ros.core.prompt, procvlm_ros.core.sampling
import procvlm_ros.core.image, procvlm_ros.core.backends, procvlm_ros.core.backends.scripted
import procvlm_ros.core.backends.transformers_backend
print('ok')
"""
BLOCKED = {'rclpy', 'torch', 'transformers', 'tensorrt', 'onnxruntime', 'sensor_msgs',
           'std_msgs', 'procvlm_msgs', 'builtin_interfaces', 'av', 'rosbags', 'matplotlib'}


def test_core_imports_without_ros_or_torch():
    out = subprocess.run([sys.executable, '-c', CODE.format(blocked=BLOCKED)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'
