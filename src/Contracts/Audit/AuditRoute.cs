using System.Buffers.Binary;

namespace SEmigrate.Contracts.Audit;

/// <summary>Where audit events go: to one of <paramref name="Partitions"/> queues named after
/// <paramref name="Queue"/>, chosen by the stream the event belongs to (its migration; a VM's for paging).
/// Each queue is read by one auditor at a time, one event at a time, so a stream's events are appended
/// in the order they were sent, while streams on other queues are appended in parallel.</summary>
public sealed record AuditRoute(string Queue, int Partitions)
{
    public IEnumerable<string> Queues => Enumerable.Range(0, Partitions).Select(QueueNumbered);

    public string QueueOf(Guid stream) => QueueNumbered((int)(BinaryPrimitives.ReadUInt32LittleEndian(stream.ToByteArray()) % (uint)Partitions));

    /// <summary>The exchange in front of the stream's queue (MassTransit's send address): sending never
    /// declares the queue, which its auditor declares as a single-active-consumer queue.</summary>
    public Uri AddressOf(Guid stream) => new($"exchange:{QueueOf(stream)}");

    private string QueueNumbered(int partition) => $"{Queue}-{partition}";
}
