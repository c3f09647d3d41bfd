// A Node.js function run by the official aws-lambda-ric client: it reports what Lambda's
// context told it and fails on request.
let cold = true;

exports.handler = async (event, context) => {
  const wasCold = cold;
  cold = false;
  console.log("handling", context.awsRequestId);
  if (event.fail) {
    throw new TypeError(event.fail);
  }
  return {
    request_id: context.awsRequestId,
    function_name: context.functionName,
    memory_limit_in_mb: context.memoryLimitInMB,
    invoked_function_arn: context.invokedFunctionArn,
    remaining_ms_positive: context.getRemainingTimeInMillis() > 0,
    handler: process.env._HANDLER,
    cold: wasCold,
    event,
  };
};
