"""launch.validate: what each kind of launcher value accepts and refuses."""

import re

import pytest

from launch import validate

DNS_LABEL = re.compile(r'[a-z]([-a-z0-9]*[a-z0-9])?')


@pytest.mark.parametrize('value', ['a\nb', 'a\rb', 'a\tb', 'a\x00', 'a\x1b[31m', 'a\x7f',
                                   'a\x85', 'a\u2028b', 'a\u2029b', 'a\u202eb', 'a\u200bb'])
def test_control_characters_are_refused_naming_the_flag(value):
  with pytest.raises(validate.LaunchError) as error:
    validate.text('--workdir', value)
  message = str(error.value)
  assert message.startswith('--workdir ') and '\n' not in message


@pytest.mark.parametrize('value', ['gs://b/run', '/a b/ü ñ', "it's $(x)", ''])
def test_printable_text_passes(value):
  assert validate.text('--workdir', value) == value


@pytest.mark.parametrize('value', ['30', '30:00', '24:00:00', '2-12', '2-12:30',
                                   '2-12:30:00', '0'])
def test_slurm_time_formats_pass(value):
  assert validate.slurm_time('--time', value) == value


@pytest.mark.parametrize('value', ['', '1h', '1:2:3:4', '2-', '-1', '2-12:30:00:00', ' 30',
                                   '30 ', '1d', '24:00:00\n'])
def test_other_times_are_refused(value):
  with pytest.raises(validate.LaunchError, match='^--time '):
    validate.slurm_time('--time', value)


@pytest.mark.parametrize('value', ['/logs', '.', 'logs/a-b_c.d', '/logs/100%'])
def test_sbatch_values_pass(value):
  assert validate.sbatch_directive_value('--log-dir', value) == value


@pytest.mark.parametrize('value', ['/my logs', '/logs\t', '/l"o', "/l'o", '/l\\o', '/l#o'])
def test_values_sbatch_would_misparse_are_refused(value):
  with pytest.raises(validate.LaunchError, match='^--log-dir '):
    validate.sbatch_directive_value('--log-dir', value)


def test_dns_labels():
  assert validate.dns_label('--name', 'mm1-3b') == 'mm1-3b'
  for bad in ['Mm1', 'mm1_3b', '3b', '-a', 'a-', 'a.b', '', 'a' * 64]:
    with pytest.raises(validate.LaunchError, match='^--name '):
      validate.dns_label('--name', bad)
  with pytest.raises(validate.LaunchError, match='at most 10'):
    validate.dns_label('--name', 'a' * 11, max_length=10)


def test_derived_labels_are_valid_distinct_and_short_enough():
  names = ['mm1_45_45_10', 'captions-only', 'a_b', 'a-b', 'A.B', 'x' * 80, 'x' * 81]
  labels = validate.derive_dns_labels(names, prefix='mm1-mix', max_length=40)
  assert len(set(labels)) == len(names)
  for label in labels:
    assert DNS_LABEL.fullmatch(label) and len(label) <= 40, label
  assert labels[:2] == ['mm1-mix-mm1-45-45-10', 'mm1-mix-captions-only']
  assert validate.derive_dns_labels(names, prefix='mm1-mix', max_length=40) == labels
