//! The engine without Python: construction, one step, rejection of bad views, checkpoint round trip.
use byol_rs::config::{LearnerConfig, NetworkSettings, ScheduleSettings};
use byol_rs::model::backbone::BackboneKind;
use byol_rs::train::Learner;
use tch::{Device, Kind, Tensor};

fn tiny() -> Learner {
    let network = NetworkSettings { backbone: BackboneKind::ConvNet, in_channels: 1, projector_hidden: 16, projection_dim: 8, predictor_hidden: 16, ..Default::default() };
    let schedule = ScheduleSettings { total_steps: 10, ..Default::default() };
    Learner::new(LearnerConfig { network, schedule, ..Default::default() }).unwrap()
}

fn views() -> (Tensor, Tensor) {
    tch::manual_seed(3);
    let opts = (Kind::Float, Device::Cpu);
    (Tensor::randn([4, 1, 12, 12], opts), Tensor::randn([4, 1, 12, 12], opts))
}

#[test]
fn target_starts_equal_and_moves_after_a_step() {
    let mut l = tiny();
    let k = l.target_params().views.len();
    assert!(l.params().views[..k].iter().zip(&l.target_params().views).all(|(a, b)| a.equal(b)));
    let (a, b) = views();
    let m = l.step(&a, &b).unwrap();
    assert!(m.updated && m.step == 1 && m.loss.value().unwrap().is_finite());
    assert!(!l.params().views[0].equal(&l.target_params().views[0]));
}

#[test]
fn a_batch_of_one_is_rejected_without_changing_the_step() {
    let mut l = tiny();
    let (a, b) = views();
    let err = l.step(&a.narrow(0, 0, 1), &b.narrow(0, 0, 1)).err().unwrap();
    assert!(err.to_string().starts_with("view1: training needs a batch of at least 2"), "{err}");
    assert_eq!(l.step_count(), 0);
}

#[test]
fn checkpoint_round_trip_restores_weights_and_counters() {
    let mut l = tiny();
    let (a, b) = views();
    l.step(&a, &b).unwrap();
    let path = std::env::temp_dir().join(format!("byol-rs-engine-{}.safetensors", std::process::id()));
    byol_rs::checkpoint::save(&l, &path).unwrap();
    let r = byol_rs::checkpoint::load(&path, None, None).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r.step_count(), 1);
    assert!(r.params().views.iter().zip(&l.params().views).all(|(x, y)| x.equal(y)));
}
