//! A Lambda target group as the load balancer uses it at run time.

/// A target group whose one target is a Lambda function.
#[derive(Debug, Clone)]
pub struct LambdaTargetGroup {
    /// The group's name.
    pub name: String,
    /// Its ARN, sent to the function as `requestContext.elb.targetGroupArn`.
    pub arn: String,
    /// The function to invoke.
    pub function: String,
    /// ALB's `lambda.multi_value_headers.enabled` attribute.
    pub multi_value_headers: bool,
}

impl LambdaTargetGroup {
    /// ALB's ARN shape for a target group: `…:targetgroup/NAME/ID`, the id derived from the
    /// name so that it is stable across restarts.
    pub fn arn_for(region: &str, account: &str, name: &str) -> String {
        let id = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{name}/{id:016x}")
    }
}
