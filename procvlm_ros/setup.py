from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'procvlm_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={'procvlm_ros.core': ['templates/*.txt'],
                  'procvlm_ros.demo_model': ['checkpoint/*'],
                  'procvlm_ros.adapt': ['annotator.html']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    python_requires='>=3.10',
    install_requires=['numpy>=1.22', 'pillow>=9'],
    extras_require={
        'transformers': ['torch>=2.4', 'transformers>=4.57.1,!=5.0.*', 'safetensors'],
        'media': ['av>=12', 'rosbags>=0.10', 'matplotlib>=3.5', 'tqdm'],
        'onnx': ['onnx>=1.17', 'onnxruntime>=1.18', 'onnxscript'],
        'test': ['pytest', 'pytest-timeout'],
    },
    zip_safe=True,
    maintainer='procvlm_ros maintainers',
    maintainer_email='maintainers@procvlm-ros.invalid',
    description='Live task-progress monitoring with ProcVLM for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'monitor_node = procvlm_ros.ros.monitor_node:main',
            'procvlm-monitor = procvlm_ros.ros.monitor_node:main',
            'procvlm-infer = procvlm_ros.cli.infer:main',
            'video_camera = procvlm_ros.ros.video_camera:main',
            'synthetic_camera = procvlm_ros.ros.synthetic_camera:main',
            'procvlm-export = procvlm_ros.export.cli:main',
            'procvlm-synth = procvlm_ros.synth.cli:main',
            'procvlm-eval = procvlm_ros.evaluation.cli:main',
            'procvlm-visualize = procvlm_ros.cli.visualize:main',
            'procvlm-adapt = procvlm_ros.adapt.cli:main',
            'procvlm-label = procvlm_ros.label.cli:main',
        ],
    },
)
