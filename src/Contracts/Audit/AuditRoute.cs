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

    /// <summary>The exchange events of the stream are sent to (MassTransit's send address), bound by the
    /// auditor to the stream's queue: sending never declares the queue, which its auditor declares as a
    /// single-active-consumer queue. Named apart from the queue: hosts may declare the exchange (MassTransit
    /// does before it sends), so their broker users must not be able to delete a queue of its name.</summary>
    public Uri AddressOf(Guid stream) => new($"exchange:{EntryOf(QueueOf(stream))}");

    public static string EntryOf(string queue) => queue + ".in";

    private string QueueNumbered(int partition) => $"{Queue}-{partition}";
}
