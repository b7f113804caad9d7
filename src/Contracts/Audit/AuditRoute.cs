using System.Buffers.Binary;

namespace SEmigrate.Contracts.Audit;

/// <summary>Where audit events go: to one of <paramref name="Partitions"/> queues named after
/// <paramref name="Queue"/>, chosen by the stream the event belongs to (its migration; a VM's for paging).
/// Each queue is read by one auditor at a time, one event at a time, so a stream's events are appended
/// in the order they were sent, while streams on other queues are appended in parallel. A host
/// (<paramref name="Sender"/>) sends them through an exchange of its own per queue, which the orchestrators
/// bind to the queue (HostRoutes): a host's broker user declares nothing shared.</summary>
public sealed record AuditRoute(string Queue, int Partitions, string? Sender = null)
{
    public IEnumerable<string> Queues => Enumerable.Range(0, Partitions).Select(QueueNumbered);

    public string QueueOf(Guid stream) => QueueNumbered((int)(BinaryPrimitives.ReadUInt32LittleEndian(stream.ToByteArray()) % (uint)Partitions));

    /// <summary>Where the stream's events are sent (MassTransit's send address): the host's own exchange for
    /// the stream's queue, or that queue's exchange (an orchestrator). Sending never declares the queue,
    /// which its auditor declares as a single-active-consumer queue.</summary>
    public Uri AddressOf(Guid stream) => new($"exchange:{(Sender is null ? QueueOf(stream) : Migration.StepQueues.AuditExit(Sender, QueueOf(stream)))}");

    private string QueueNumbered(int partition) => $"{Queue}-{partition}";
}
