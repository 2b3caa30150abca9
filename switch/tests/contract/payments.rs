//! PaymentService: Pay, PayBatch, PayStream, GetPaymentStatus, RequestCollect, Refund,
//! GetPosition (payments.proto, common.proto).
