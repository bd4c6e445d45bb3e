"""mm1-jax: pretrain MM1-style multimodal LLMs in JAX/Flax (NNX)."""

from setuptools import find_packages, setup

CORE = [
    'jax>=0.10,<0.11',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'grain>=0.2.18',
    'ml-collections>=1.1.0',
    'tensorflow-datasets>=4.9.10',
    'array-record>=0.8.1',
    'sentencepiece>=0.2.0',
    'pillow>=11',
    'numpy>=2',
    'tqdm>=4.66',
    'tensorboardX>=2.6',
    'absl-py>=2.1',
    'pyyaml>=6',
    'matplotlib>=3.8',
    'pyarrow>=14',
]

EXTRAS = {
    # The test suite checks parity against transformers and pycocoevalcap and the SeqIO
    # backend, so it installs those too. torch is pinned to its CPU build (see 'torch').
    # libtpu (jax[tpu], a 210 MB wheel) lets tests/test_aot.py compile for TPU topologies
    # on a CPU host; JAX still runs on the CPU there.
    'test': ['pytest>=8', 'pytest-timeout>=2.3', 'pytest-xdist>=3.5', 'torch==2.13.0',
             'transformers>=4.46', 'safetensors>=0.4', 'pycocoevalcap>=1.2', 'seqio>=0.0.19',
             'jax[tpu]>=0.10,<0.11'],
    # SeqIO pulls in TensorFlow and tensorflow-text (over 1 GB); it is needed only for
    # `data.backend='seqio'`, so it is an extra and not part of the quick start.
    'seqio': ['seqio>=0.0.19'],
    # CPU build of PyTorch pinned: an open range downloads a multi-GB CUDA build.
    'torch': ['torch==2.13.0', 'transformers>=4.46', 'safetensors>=0.4'],
    # On TPU VMs; on any host also `python -m mm1_jax.aot` (compile for a TPU topology).
    'tpu': ['jax[tpu]>=0.10,<0.11'],
    'cuda': ['jax[cuda12]>=0.10,<0.11'],
}

setup(
    name='mm1-jax',
    version='0.1.0',
    description='Pretrain MM1-style multimodal LLMs (ViT, connector, decoder) in JAX/Flax NNX.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=find_packages(include=['mm1_jax*', 'data_pipelines*', 'launch*', 'experiments*']),
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        'console_scripts': [
            'mm1-train=mm1_jax.train.__main__:run',
            'mm1-prepare=data_pipelines.prepare:run',
            'mm1-evaluate=mm1_jax.evaluate:run',
            'mm1-export=mm1_jax.export.to_pytorch:run',
            'mm1-from-pytorch=mm1_jax.export.from_pytorch:run',
            'mm1-aot=mm1_jax.aot.__main__:run',
        ],
    },
)
