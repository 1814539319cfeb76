"""tf_fm.features: the one declaration of a feature, its model field, the old names."""

import pytest

import tf_fm
from tf_fm import features
from tf_fm.features import CategoricalFeature, MultiValuedFeature, NumericFeature


def test_ready_features_give_their_model_fields():
    assert features.model_field(CategoricalFeature("u", encoding="integer", num_ids=7)) == {
        "name": "u",
        "kind": "categorical",
        "vocabulary_size": 7,
    }
    assert features.model_field(NumericFeature("x")) == {"name": "x", "kind": "numeric"}
    tags = MultiValuedFeature("t", encoding="integer", num_ids=5, max_length=3, weighted=True)
    assert features.model_field(tags) == {
        "name": "t",
        "kind": "multivalued",
        "vocabulary_size": 5,
        "max_length": 3,
        "weighted": True,
        "combiner": "sum",
    }
    assert features.raw_specs(tags) == {"t": ("int64", (3,)), "t_weights": ("float32", (3,))}
    # An "oov" integer feature has one more id (the preprocessing maps outsiders to it).
    oov = CategoricalFeature("u", encoding="integer", num_ids=7, out_of_range="oov")
    assert features.model_field(oov)["vocabulary_size"] == 8


def test_learned_features_need_their_state():
    with pytest.raises(ValueError, match="Feature 'u' is not adapted yet"):
        features.model_field(CategoricalFeature("u"))
    field = features.model_field(CategoricalFeature("u"), {"vocabulary": ["a", "b"]})
    assert field["vocabulary_size"] == 3  # 1 OOV bucket + 2 tokens
    with pytest.raises(ValueError, match="not adapted"):
        tf_fm.FM([CategoricalFeature("u")])


def test_validation_names_the_feature_and_argument():
    with pytest.raises(ValueError, match=r"Feature 't': `weighted=True` needs encoding='integer'"):
        MultiValuedFeature("t", weighted=True)
    with pytest.raises(ValueError, match=r"Feature 't': `max_length` must be a positive integer"):
        MultiValuedFeature("t", encoding="integer", num_ids=3)
    with pytest.raises(ValueError, match=r"Feature 'u': encoding='integer' needs dtype='int64'"):
        CategoricalFeature("u", encoding="integer", num_ids=3, dtype="string")
    assert CategoricalFeature("u", encoding="integer", num_ids=3).dtype == "int64"
    assert CategoricalFeature("u").dtype == "string"
    with pytest.raises(ValueError, match=r"Feature 'f': `vocabulary_size` must be a positive"):
        features.field_config({"name": "f", "kind": "categorical", "vocabulary_size": 0})
    with pytest.raises(TypeError, match="A field is a tf_fm feature"):
        features.field_config(("f", 3))


def test_config_round_trip():
    for feature in (
        CategoricalFeature("u", vocabulary=["a", "b"]),
        NumericFeature("x", transform="discretize", bin_boundaries=[0.0, 1.0]),
        MultiValuedFeature("t", encoding="integer", num_ids=4, max_length=2, weighted=True),
    ):
        config = feature.get_config()
        assert all(not isinstance(v, tuple) for v in config.values())  # plain JSON types
        assert features.feature_from_config(config) == feature


def test_old_names_warn_and_still_build_models():
    with pytest.warns(DeprecationWarning, match="CategoricalField is deprecated"):
        user = tf_fm.CategoricalField("user", 10)
    with pytest.warns(DeprecationWarning, match="NumericField is deprecated"):
        age = tf_fm.NumericField("age")
    with pytest.warns(DeprecationWarning, match="MultiValuedField is deprecated"):
        tags = tf_fm.MultiValuedField("tags", 5, 3, weighted=True)
    assert user == CategoricalFeature("user", encoding="integer", num_ids=10)
    assert tags.weighted and tags.max_length == 3
    model = tf_fm.FM([user, age, tags])
    assert sorted(t.name for t in model.inputs) == ["age", "tags", "tags_weights", "user"]
    with pytest.warns(DeprecationWarning, match="libsvm_field is deprecated"):
        feature = tf_fm.data.libsvm_field(vocabulary_size=9, max_length=2)
    assert feature.num_ids == 9
