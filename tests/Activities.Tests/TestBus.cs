using MassTransit;
using SEmigrate.TestSupport;

namespace SEmigrate.Activities.Tests;

/// <summary>A MassTransit bus on the test broker, for the events activities publish.</summary>
internal static class TestBus
{
    public static async Task<IBusControl> StartAsync(RabbitMqFixture rabbit)
    {
        var bus = Bus.Factory.CreateUsingRabbitMq(cfg =>
        {
            var user = rabbit.Uri.UserInfo.Split(':');
            cfg.Host(rabbit.Uri.Host, (ushort)rabbit.Uri.Port, "/", h =>
            {
                h.Username(user[0]);
                h.Password(user[1]);
                if (rabbit.Uri.Scheme == "amqps")
                {
                    h.UseSsl(s => s.ServerName = rabbit.Uri.Host);
                }
            });
        });
        await bus.StartAsync(TestContext.Current.CancellationToken);
        return bus;
    }

    /// <summary>A host's step guard that pins the tests' operator key; refusals go to a queue nobody reads.</summary>
    public static StepGuard Guard(HostContext host, IBus bus) =>
        new(host, new OperatorTrust(TestOperator.PublicKey), bus, new Contracts.Audit.AuditRoute("semigrate-audit-activity-tests", 1),
            Microsoft.Extensions.Logging.Abstractions.NullLogger<StepGuard>.Instance);
}
