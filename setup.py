"""sa2va_ros: a ROS 2 perception node that grounds commands with Sa2VA and tracks targets with SAM-2."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "sa2va_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Sa2VA referring segmentation + streaming SAM-2 tracking as a ROS 2 node",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    include_package_data=True,
    package_data={PACKAGE: ["assets/**/*", "config/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/msg", glob("msg/*.msg")),
    ],
    install_requires=[
        "numpy>=1.26",
        "pillow>=10",
        "safetensors>=0.4",
        "torch>=2.4",
        "torchvision>=0.19",
        "sam2>=1.0",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "sentencepiece>=0.2",
        "protobuf>=4",
        "opencv-python-headless>=4.9",
        "rosbags>=0.10",
        "rosbags-image>=0.10",
        "tqdm",
        "accelerate>=1.0",
    ],
    extras_require={
        "onnx": ["onnx>=1.17", "onnxscript>=0.2", "onnxruntime>=1.20"],
        "train": ["peft>=0.14"],
        "eval": ["pycocotools>=2.0.8", "matplotlib>=3.8", "mcap>=1.2"],
    },
    entry_points={
        "console_scripts": [
            "sa2va-ground=sa2va_ros.cli.ground:main",
            "sa2va-convert=sa2va_ros.cli.convert:main",
            "sa2va-train=sa2va_ros.cli.train:main",
            "sa2va_node=sa2va_ros.ros.node:main",
            "sa2va-make-bag=sa2va_ros.cli.make_bag:main",
            "sa2va-bag-eval=sa2va_ros.cli.bag_eval:main",
            "sa2va-eval=sa2va_ros.cli.eval:main",
            "sa2va-demo=sa2va_ros.cli.demo:main",
            "sa2va-export=sa2va_ros.cli.export:main",
            "sa2va-build-engines=sa2va_ros.cli.build_engines:main",
        ],
    },
    zip_safe=False,
)
