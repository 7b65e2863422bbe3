use rectiflow::{ops, Gpu, Tensor};
fn main() -> rectiflow::Result<()> {
    let gpu = Gpu::new()?;
    println!(
        "{:?} imm={}",
        gpu.adapter_info().name,
        gpu.uses_immediates()
    );
    let a = Tensor::from_slice(&gpu, &[2, 3], &[1., 2., 3., 4., 5., 6.])?;
    let b = Tensor::from_slice(&gpu, &[3, 1], &[1., 1., 1.])?;
    println!("{:?}", ops::matmul(&a, &b)?.to_vec()?);
    let b = Tensor::from_slice(&gpu, &[3, 4], &[1.; 12])?;
    let a4 = Tensor::from_slice(&gpu, &[2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.])?;
    let b4 = Tensor::from_slice(&gpu, &[4, 4], &[1.; 16])?;
    println!("{:?}", ops::matmul(&a, &b)?.to_vec()?);
    println!("{:?}", ops::matmul(&a4, &b4)?.to_vec()?);
    println!("{:?}", ops::gelu(&a)?.to_vec()?);
    println!("{:?}", ops::sum_rows(&a)?.to_vec()?);
    println!("{:?}", ops::max_rows(&a)?.to_vec()?);
    println!("{:?}", ops::transpose(&a)?.to_vec()?);
    if gpu.has_f16() {
        println!("{:?}", ops::to_f32(&ops::to_f16(&a)?)?.to_vec()?);
    }
    println!("{:?}", gpu.pool_stats());
    Ok(())
}
